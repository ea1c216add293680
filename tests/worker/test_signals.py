"""Progress, streamed text, previews, cancels and batch keys through the worker loop, in-process
against real queues (memory, a SQLite file, and Redis when SWELL_TEST_REDIS_URL is set)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from swell.core.errors import Unavailable
from swell.core.jobs import Job, JobEvent, JobSpec, JobState
from swell.engines.base import ChoiceSignals, Engine, JobCancelled, RunContext
from swell.engines.registry import batch_key_of, create_engine
from swell.engines.results import LocalResultStore, ObjectResultStore
from swell.queue.base import Outcome, QueueBackend, Update, open_queue
from swell.worker.batch import BatchRun, Pending, Reported, Signals, split_by_key
from swell.worker.runner import Runner
from tests.engines.progressive import PNG, Painter

BACKENDS = ["memory", "sqlite"] + (["redis"] if os.environ.get("SWELL_TEST_REDIS_URL") else [])


@pytest.fixture(params=BACKENDS)
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueBackend]:
    if request.param == "memory":
        opened = open_queue("memory://")
    elif request.param == "sqlite":
        opened = open_queue(f"sqlite:///{tmp_path / 'queue.db'}")
    else:
        yield from redis_queue()
        return
    yield opened
    opened.close()


def redis_queue() -> Iterator[QueueBackend]:
    """A Redis queue under a fresh key prefix in database 5, its keys deleted afterwards."""
    import redis

    url = os.environ["SWELL_TEST_REDIS_URL"].rsplit("/", 1)[0] + "/5"
    prefix = f"swell-seam-test-{uuid.uuid4().hex[:8]}"
    opened = open_queue(url, prefix=prefix)
    try:
        yield opened
    finally:
        opened.close()
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def runner_for(queue: QueueBackend, engine: Engine, tmp_path: Path, **kwargs: Any) -> Runner:
    engine.load()
    return Runner(queue, engine, "svc", "w1", tmp_path, max_batch_size=8, lease_seconds=2.0, **kwargs)


def counting(tmp_path: Path) -> Engine:
    return create_engine("callable", {"function": "tests.engines.progressive:count"}, data_dir=tmp_path)


def submit(queue: QueueBackend, inputs: list[dict[str, Any]]) -> list[str]:
    return [queue.submit(JobSpec("svc", item, timeout=30.0))[0].id for item in inputs]


def run_leased(queue: QueueBackend, runner: Runner) -> list[Job]:
    jobs = queue.lease("svc", "w1", max_jobs=8, lease_seconds=2.0)
    runner.run_batch(jobs)
    return jobs


def kinds(events: Sequence[JobEvent], kind: str) -> list[JobEvent]:
    return [e for e in events if e.kind == kind]


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_progress_text_and_previews_reach_the_event_log(queue: QueueBackend, tmp_path: Path) -> None:
    runner = runner_for(queue, counting(tmp_path), tmp_path, report_seconds=0.05)
    [job_id] = submit(queue, [{"steps": 8, "sleep": 0.03, "preview_every": 2}])
    run_leased(queue, runner)
    job = queue.get(job_id)
    assert job.state is JobState.SUCCEEDED and job.result == {"steps": 8, "file": "count.txt"}
    events = queue.events(job_id)
    text = "".join(e.data["text"] for e in kinds(events, "delta"))
    assert text == "".join(f"{i} " for i in range(8)), "every piece, in order, none twice"
    fractions = [e.data["fraction"] for e in kinds(events, "progress") if "fraction" in e.data]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len(kinds(events, "delta")) > 1, "text is streamed while the job runs, not only at the end"
    previews = [e.data["preview"] for e in kinds(events, "progress") if e.data.get("preview")]
    assert previews and set(previews) == {"preview.png"}
    with LocalResultStore(tmp_path).open(job_id, "preview.png") as opened:
        assert opened.read() == PNG + bytes([7])  # the latest preview replaced the earlier ones
    final = [e for e in kinds(events, "state") if e.data["state"] == "succeeded"]
    assert final and all(e.seq < final[0].seq for e in events if e.kind != "state")


def test_a_jobs_first_text_is_sent_at_once(queue: QueueBackend, tmp_path: Path) -> None:
    """The first token a streaming client waits for does not wait for the periodic report (here
    set far beyond the job's length): it is in the event log while the job still runs."""
    runner = runner_for(queue, counting(tmp_path), tmp_path, report_seconds=60.0)
    [job_id] = submit(queue, [{"steps": 2, "sleep": 0.3}])
    worker = threading.Thread(target=run_leased, args=(queue, runner))
    worker.start()
    try:
        wait_for(lambda: bool(kinds(queue.events(job_id), "delta")))
        assert queue.get(job_id).state is JobState.LEASED
    finally:
        worker.join()
    text = "".join(e.data["text"] for e in kinds(queue.events(job_id), "delta"))
    assert text == "0 1 " and queue.get(job_id).state is JobState.SUCCEEDED


def test_a_running_job_stops_at_its_next_step_when_cancelled(queue: QueueBackend, tmp_path: Path) -> None:
    runner = runner_for(queue, counting(tmp_path), tmp_path, cancel_seconds=0.05)
    [job_id, other] = submit(queue, [{"steps": 2000, "sleep": 0.01}, {"steps": 2}])
    jobs = queue.lease("svc", "w1", max_jobs=1, lease_seconds=2.0)
    worker = threading.Thread(target=runner.run_batch, args=(jobs,))
    worker.start()
    wait_for(lambda: kinds(queue.events(job_id), "delta"))
    assert queue.cancel(job_id).state is JobState.LEASED  # a request: the worker stops it
    worker.join(30)
    assert not worker.is_alive()
    job = queue.get(job_id)
    assert job.state is JobState.CANCELLED and job.result is None
    text = "".join(e.data["text"] for e in kinds(queue.events(job_id), "delta"))
    assert 0 < len(text.split()) < 2000, "it stopped part way"
    assert runner.counters.jobs_cancelled == 1 and runner.counters.jobs_failed == 0
    run_leased(queue, runner)
    assert queue.get(other).state is JobState.SUCCEEDED, "the worker goes on serving"


def test_a_job_cancelled_before_its_turn_is_not_run(queue: QueueBackend, tmp_path: Path) -> None:
    runner = runner_for(queue, counting(tmp_path), tmp_path, cancel_seconds=0.05)
    first, second, third = submit(queue, [{"steps": 30, "sleep": 0.02}, {"steps": 1}, {"steps": 1}])
    jobs = queue.lease("svc", "w1", max_jobs=8, lease_seconds=2.0)
    assert [j.id for j in jobs] == [first, second, third]
    worker = threading.Thread(target=runner.run_batch, args=(jobs,))
    worker.start()
    wait_for(lambda: kinds(queue.events(first), "delta"))
    queue.cancel(third)
    worker.join(30)
    assert [queue.get(i).state for i in (first, second, third)] == [
        JobState.SUCCEEDED,
        JobState.SUCCEEDED,
        JobState.CANCELLED,
    ]
    assert not kinds(queue.events(third), "delta") and not (tmp_path / "files" / third).exists()


def test_jobs_with_equal_batch_keys_share_a_call(queue: QueueBackend, tmp_path: Path) -> None:
    engine = create_engine("tests.engines.progressive:SPEC", {}, data_dir=tmp_path, device="cpu")
    assert isinstance(engine, Painter)
    store = ObjectResultStore("memory://")
    key = batch_key_of("tests.engines.progressive:SPEC")
    runner = runner_for(queue, engine, tmp_path, batch_key=key, results=store)
    widths = [64, 128, 64, 128, 64]
    ids = submit(queue, [{"prompt": "p", "width": w, "images": 2} for w in widths])
    run_leased(queue, runner)
    assert engine.calls == [[64, 64, 64], [128, 128]]
    for job_id in ids:
        job = queue.get(job_id)
        assert job.state is JobState.SUCCEEDED and job.result == {
            "images": [{"file": "0.png"}, {"file": "1.png"}],
            "device": "cpu",
        }
        with store.open(job_id, "1.png") as opened:
            assert opened.read() == PNG
        assert kinds(queue.events(job_id), "progress")[-1].data["fraction"] == 1.0


class Flaky:
    """A real queue whose `report` and `cancel_requested` fail with Unavailable the first `n` times."""

    def __init__(self, inner: QueueBackend, n: int) -> None:
        self.inner, self.left = inner, n
        self.reports: list[list[Update]] = []

    def report(self, owner: str, updates: Sequence[Update]) -> None:
        self.reports.append(list(updates))
        if self.left > 0:
            self.left -= 1
            raise Unavailable("the queue's storage is down")
        self.inner.report(owner, updates)

    def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        if self.left > 0:
            raise Unavailable("the queue's storage is down")
        return self.inner.cancel_requested(job_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_text_survives_a_storage_outage_in_order(queue: QueueBackend, tmp_path: Path) -> None:
    flaky = Flaky(queue, 3)
    engine = counting(tmp_path)
    runner = runner_for(flaky, engine, tmp_path, report_seconds=0.02, cancel_seconds=0.02)  # type: ignore[arg-type]
    [job_id] = submit(queue, [{"steps": 12, "sleep": 0.02}])
    run_leased(flaky, runner)  # type: ignore[arg-type]
    assert len(flaky.reports) > 3, "the failed reports were tried again"
    text = "".join(e.data["text"] for e in kinds(queue.events(job_id), "delta"))
    assert text == "".join(f"{i} " for i in range(12))
    assert queue.get(job_id).state is JobState.SUCCEEDED


# -- the parts, without a queue -----------------------------------------------------------------


def test_signals_keep_the_latest_progress_and_all_text() -> None:
    signals = Signals()
    assert not signals
    signals.progress("a", 0.1, None, "one")
    signals.delta("a", "x")
    signals.progress("a", 0.2, b"png", None)
    signals.delta("a", "y")
    signals.delta("b", "z")
    taken = signals.take({"a"})
    assert taken == {"a": Pending(0.2, "one", b"png", {0: ["x", "y"]})} and signals
    signals.delta("a", "w")
    signals.progress("a", 0.3, None, None)
    signals.put_back(taken)  # an older report that failed goes before the newer one
    assert signals.take() == {
        "a": Pending(0.3, "one", b"png", {0: ["x", "y", "w"]}),
        "b": Pending(texts={0: ["z"]}),
    }
    signals.mark_cancelled({"a"})
    signals.mark_cancelled({"b"})
    assert signals.cancelled("a") and signals.cancelled("b") and not signals.cancelled("c")
    signals.delta("c", "q")
    signals.drop({"c"})
    assert not signals


def test_signals_keep_each_completions_text_apart_and_in_order() -> None:
    signals = Signals()
    assert isinstance(signals, ChoiceSignals)
    signals.choice_delta("a", 1, "B")
    signals.delta("a", "a")
    signals.choice_delta("a", 1, "b")
    taken = signals.take()
    assert taken == {"a": Pending(texts={1: ["B", "b"], 0: ["a"]})}
    assert taken["a"].joined() == {0: "a", 1: "Bb"} and list(taken["a"].joined()) == [0, 1]
    signals.choice_delta("a", 2, "c")
    signals.choice_delta("a", 1, "!")
    signals.put_back(taken)  # the older pieces of each completion go before the newer ones
    assert signals.take()["a"].joined() == {0: "a", 1: "Bb!", 2: "c"}
    for bad in (-1, True, "1"):
        with pytest.raises(ValueError, match="completion index"):
            signals.choice_delta("a", bad, "x")  # type: ignore[arg-type]
    assert not signals


def test_a_run_context_streams_every_completion_into_worker_signals(tmp_path: Path) -> None:
    signals = Signals()
    context = RunContext(["a"], tmp_path, signals=signals)
    context.delta("a", "zero")
    context.delta("a", "one", index=1)
    context.delta("a", "", index=2)  # nothing to send: no entry
    assert signals.take()["a"].joined() == {0: "zero", 1: "one"}


def job(n: int, **data: Any) -> Job:
    return Job.create(JobSpec("svc", {"n": n, **data}, timeout=1.0), now=0.0)


def test_split_by_key_groups_in_order_and_isolates_bad_keys() -> None:
    jobs = [job(0, w=1), job(1, w=2), job(2, w=1), job(3, w=[1]), job(4)]
    groups = split_by_key(jobs, lambda payload: payload["w"])
    assert [[j.input["n"] for j in g] for g in groups] == [[0, 2], [1], [3], [4]]
    assert split_by_key(jobs, None) == [jobs] and split_by_key([], None) == []


def test_a_cancelled_job_ends_cancelled_whatever_the_engine_returned() -> None:
    a, b, c = job(0), job(1), job(2)
    run = BatchRun((a, b, c), started=0.0)
    run.cancelled = frozenset({a.id})
    assert run.apply(Reported(a, {"done": True})) == []  # reported early: settled at the next look
    run.apply(Reported(b, JobCancelled("the engine stopped it")))
    assert run.take_early() == [Outcome.cancelled(a.id), Outcome.cancelled(b.id)]
    run.cancelled = frozenset({a.id, c.id})
    [third] = run.abandon()
    assert third == Outcome.cancelled(c.id)


class Counting:
    """A real queue that counts the calls made to it, by method name."""

    def __init__(self, inner: QueueBackend) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return target(*args, **kwargs)

        return counted


def test_short_batches_cost_no_report_or_cancel_calls(queue: QueueBackend, tmp_path: Path) -> None:
    counting_queue = Counting(queue)
    engine = create_engine("callable", {"function": "tests.worker.funcs:echo"}, data_dir=tmp_path)
    runner = runner_for(counting_queue, engine, tmp_path)  # type: ignore[arg-type]
    ids = submit(queue, [{"i": i} for i in range(40)])
    while any(queue.get(i).state is not JobState.SUCCEEDED for i in ids):
        run_leased(counting_queue, runner)  # type: ignore[arg-type]
    assert "report" not in counting_queue.calls and "cancel_requested" not in counting_queue.calls
    assert counting_queue.calls["settle"] == counting_queue.calls["lease"] == 5
