"""The worker loop in-process against a real SQLite file."""

import threading
from pathlib import Path

import pytest

from swell.core.jobs import JobSpec, JobState
from swell.engines.registry import create_engine
from swell.queue.base import QueueBackend, open_queue
from swell.worker.runner import BatchTimeout, Runner


def make_runner(tmp_path: Path, function: str, **kwargs: object) -> tuple[QueueBackend, Runner]:
    queue = open_queue(f"sqlite:///{tmp_path / 'queue.db'}")
    engine = create_engine("callable", {"function": f"tests.worker.funcs:{function}"}, data_dir=tmp_path)
    engine.load()
    runner = Runner(queue, engine, "svc", "w1", tmp_path, max_batch_size=8, lease_seconds=1.0, **kwargs)
    return queue, runner


def drain(queue: QueueBackend, runner: Runner) -> None:
    jobs = queue.lease("svc", "w1", max_jobs=8, lease_seconds=1.0)
    runner.run_batch(jobs)


def test_batch_succeeds(tmp_path: Path) -> None:
    queue, runner = make_runner(tmp_path, "echo")
    ids = [queue.submit(JobSpec("svc", {"i": i}))[0].id for i in range(5)]
    drain(queue, runner)
    jobs = [queue.get(job_id) for job_id in ids]
    assert [job.state for job in jobs] == [JobState.SUCCEEDED] * 5
    assert jobs[3].result == {"echo": {"i": 3}}
    assert runner.counters.jobs_done == 5


def test_validation_error_is_not_retried(tmp_path: Path) -> None:
    queue, runner = make_runner(tmp_path, "invalid")
    job, _ = queue.submit(JobSpec("svc", {}, max_attempts=3))
    drain(queue, runner)
    final = queue.get(job.id)
    assert final.state in (JobState.FAILED, JobState.DEAD)
    assert "ValidationError" in (final.error or "")


def test_other_errors_are_retried(tmp_path: Path) -> None:
    queue, runner = make_runner(tmp_path, "fail")
    job, _ = queue.submit(JobSpec("svc", {}, max_attempts=3))
    drain(queue, runner)
    assert queue.get(job.id).state == JobState.QUEUED
    assert "RuntimeError: boom" in (queue.get(job.id).error or "")


def test_timeout_fails_the_batch_and_raises(tmp_path: Path) -> None:
    queue, runner = make_runner(tmp_path, "sleep")
    job, _ = queue.submit(JobSpec("svc", {"seconds": 3}, timeout=0.3))
    with pytest.raises(BatchTimeout):
        drain(queue, runner)
    assert "TimeoutError" in (queue.get(job.id).error or "")


def test_serve_stops_when_asked(tmp_path: Path) -> None:
    queue, runner = make_runner(tmp_path, "echo")
    job, _ = queue.submit(JobSpec("svc", {}))
    thread = threading.Thread(target=runner.serve)
    thread.start()
    for _ in range(200):
        if queue.get(job.id).state == JobState.SUCCEEDED:
            break
        threading.Event().wait(0.01)
    runner.stopping.set()
    thread.join(5)
    assert not thread.is_alive()
    assert queue.get(job.id).state == JobState.SUCCEEDED
