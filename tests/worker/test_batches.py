"""Batches in the worker loop, in-process against a real SQLite file: a poisonous or slow job takes down
only itself, finished work is settled as it finishes, and a hung batch is handed back in halves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from swell.core.errors import SwellError
from swell.core.jobs import Job, JobSpec, JobState
from swell.engines.base import Engine
from swell.engines.registry import create_engine
from swell.queue.base import Outcome, QueueBackend, open_queue
from swell.worker.runner import BatchTimeout, Runner
from tests.worker.engines import BatchEngine, SteppingEngine


class Recording:
    """A real queue that remembers every `settle` call it passed on."""

    def __init__(self, inner: QueueBackend) -> None:
        self.inner = inner
        self.settles: list[list[Outcome]] = []

    def settle(self, owner: str, outcomes: Sequence[Outcome]) -> list[Job | SwellError]:
        self.settles.append(list(outcomes))
        return self.inner.settle(owner, outcomes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def setup(tmp_path: Path, engine: Engine) -> tuple[Recording, Runner]:
    queue = Recording(open_queue(f"sqlite:///{tmp_path / 'queue.db'}"))
    engine.load()
    runner = Runner(queue, engine, "svc", "w1", tmp_path, max_batch_size=8, lease_seconds=1.0)  # type: ignore[arg-type]
    return queue, runner


def submit(queue: Recording, inputs: list[dict[str, Any]], **spec: Any) -> list[str]:
    return [queue.submit(JobSpec("svc", item, **spec))[0].id for item in inputs]


def lease_and_run(queue: Recording, runner: Runner) -> list[Job]:
    jobs = queue.lease("svc", "w1", max_jobs=8, lease_seconds=1.0)
    runner.run_batch(jobs)
    return jobs


def states(queue: Recording, ids: list[str]) -> list[JobState]:
    return [queue.get(job_id).state for job_id in ids]


def test_a_poisonous_input_fails_only_itself(tmp_path: Path) -> None:
    engine = BatchEngine()
    queue, runner = setup(tmp_path, engine)
    inputs = [{"n": i} for i in range(7)] + [{"n": 7, "poison": "crash"}]
    ids = submit(queue, inputs, max_attempts=3)
    lease_and_run(queue, runner)
    assert states(queue, ids) == [JobState.SUCCEEDED] * 7 + [JobState.QUEUED]
    poisoned = queue.get(ids[7])
    assert poisoned.attempts == 1 and "RuntimeError: a poisonous input" in (poisoned.error or "")
    assert queue.get(ids[6]).result == {"n": 6}
    assert engine.calls == [8, 4, 4, 2, 2, 1, 1]
    # one settle per call that finished, each as soon as it did
    assert [len(call) for call in queue.settles] == [4, 2, 1, 1]
    assert runner.counters.jobs_done == 7 and runner.counters.jobs_failed == 1


def test_a_poisonous_bad_input_fails_for_good_alone(tmp_path: Path) -> None:
    queue, runner = setup(tmp_path, BatchEngine())
    ids = submit(queue, [{"n": 0, "poison": "invalid"}, {"n": 1}, {"n": 2}], max_attempts=3)
    lease_and_run(queue, runner)
    assert states(queue, ids) == [JobState.FAILED, JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert "ValidationError" in (queue.get(ids[0]).error or "")


def test_an_engine_that_returns_too_few_results_is_bisected(tmp_path: Path) -> None:
    engine = BatchEngine(short=True)
    queue, runner = setup(tmp_path, engine)
    ids = submit(queue, [{"n": i} for i in range(8)])
    lease_and_run(queue, runner)
    assert states(queue, ids) == [JobState.SUCCEEDED] * 8
    assert engine.calls == [8, 4, 2, 2, 4, 2, 2]


def test_a_batch_may_run_for_the_sum_of_its_timeouts(tmp_path: Path) -> None:
    """Four jobs of 0.5 s each, run one after another, outlast one job's timeout (1 s) by far but
    not the batch's deadline (4 s): none is killed."""
    engine = create_engine("callable", {"function": "tests.worker.funcs:sleep"}, data_dir=tmp_path)
    queue, runner = setup(tmp_path, engine)
    ids = submit(queue, [{"seconds": 0.5}] * 4, timeout=1.0)
    lease_and_run(queue, runner)
    assert states(queue, ids) == [JobState.SUCCEEDED] * 4
    assert all(queue.get(job_id).attempts == 1 for job_id in ids)


def test_a_hung_batch_is_handed_back_in_halves(tmp_path: Path) -> None:
    engine = create_engine("callable", {"function": "tests.worker.funcs:sleep"}, data_dir=tmp_path)
    queue, runner = setup(tmp_path, engine)
    ids = submit(
        queue, [{"seconds": 0.01}, {"seconds": 30}, {"seconds": 0.01}, {"seconds": 0.01}], timeout=0.2
    )
    with pytest.raises(BatchTimeout):
        lease_and_run(queue, runner)
    settled = {o.job_id: o for call in queue.settles for o in call}
    assert settled[ids[0]].split is None, "the callable engine reported the job that finished"
    assert [settled[job_id].split for job_id in ids[1:]] == [2, 2, 2]
    first, *rest = [queue.get(job_id) for job_id in ids]
    assert first.state is JobState.SUCCEEDED and first.attempts == 1
    assert [job.state for job in rest] == [JobState.QUEUED] * 3
    assert all(job.attempts == 0 and job.batch_limit == 2 for job in rest)  # the attempt did not count
    assert all("TimeoutError: a batch of 4" in (job.error or "") for job in rest)
    assert runner.counters.jobs_handed_back == 3 and runner.counters.jobs_failed == 0


def test_a_hung_batch_keeps_what_its_engine_reported(tmp_path: Path) -> None:
    queue, runner = setup(tmp_path, SteppingEngine())
    inputs = [{"n": 0}, {"n": 1}, {"n": 2, "seconds": 30}, {"n": 3}]
    ids = submit(queue, inputs, timeout=0.3)
    with pytest.raises(BatchTimeout):
        lease_and_run(queue, runner)
    assert states(queue, ids) == [JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.QUEUED, JobState.QUEUED]
    assert queue.get(ids[1]).result == {"step": 1}
    settled = {o.job_id: o for call in queue.settles for o in call}
    assert settled[ids[2]].split == 2 and settled[ids[3]].split == 2
    assert queue.get(ids[2]).attempts == 0


def test_reported_results_are_settled_while_the_batch_runs(tmp_path: Path) -> None:
    """A lease renewal comes every lease_seconds/3: results reported by then are recorded then, not at
    the end of the batch (a worker killed later keeps them)."""
    queue, runner = setup(tmp_path, SteppingEngine())
    ids = submit(queue, [{"n": 0}, {"n": 1, "seconds": 1.5}])
    lease_and_run(queue, runner)
    assert states(queue, ids) == [JobState.SUCCEEDED] * 2
    assert [[o.job_id for o in call] for call in queue.settles] == [[ids[0]], [ids[1]]]


def test_a_hung_job_alone_fails_retryable(tmp_path: Path) -> None:
    engine = create_engine("callable", {"function": "tests.worker.funcs:sleep"}, data_dir=tmp_path)
    queue, runner = setup(tmp_path, engine)
    (job_id,) = submit(queue, [{"seconds": 30}], timeout=0.2, max_attempts=3)
    with pytest.raises(BatchTimeout):
        lease_and_run(queue, runner)
    job = queue.get(job_id)
    assert job.state is JobState.QUEUED and job.attempts == 1
    assert "TimeoutError: job ran past its timeout of 0.2 s" in (job.error or "")
