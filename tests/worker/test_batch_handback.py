"""A running batch job is handed back when interactive work waits: in-process worker loop against
real queues (memory, a SQLite file, and Redis when SWELL_TEST_REDIS_URL is set)."""

from __future__ import annotations

import threading
from pathlib import Path

from swell.core.jobs import JobSpec, JobState, Priority
from swell.queue.base import QueueBackend
from tests.worker import test_signals as seam

queue = seam.queue  # the fixture: one run per backend


def submit(q: QueueBackend, item: dict[str, object], **fields: object) -> str:
    return q.submit(JobSpec("svc", item, timeout=60.0, **fields))[0].id  # type: ignore[arg-type]


def test_a_running_batch_job_goes_back_untouched_when_interactive_work_arrives(
    queue: QueueBackend, tmp_path: Path
) -> None:
    runner = seam.runner_for(queue, seam.counting(tmp_path), tmp_path, handback_seconds=0.05)
    batch = submit(queue, {"steps": 3000, "sleep": 0.01}, priority=Priority.BATCH)
    jobs = queue.lease("svc", "w1", max_jobs=1, lease_seconds=5.0)
    assert [j.id for j in jobs] == [batch]
    worker = threading.Thread(target=runner.run_batch, args=(jobs,))
    worker.start()
    seam.wait_for(lambda: seam.kinds(queue.events(batch), "delta"))
    assert queue.get(batch).state is JobState.LEASED  # nothing waits: it keeps running
    interactive = submit(queue, {"steps": 1})
    worker.join(30)
    assert not worker.is_alive()
    back = queue.get(batch)
    assert back.state is JobState.QUEUED and back.attempts == 0, "handed back, the attempt not counted"
    assert runner.counters.jobs_handed_back == 1 and runner.counters.jobs_failed == 0
    text = "".join(e.data["text"] for e in seam.kinds(queue.events(batch), "delta"))
    assert 0 < len(text.split()) < 3000, "it stopped part way"
    taken = queue.lease("svc", "w1", max_jobs=1, lease_seconds=5.0)
    assert [j.id for j in taken] == [interactive]  # the interactive job goes first


def test_a_batch_job_runs_to_the_end_while_no_interactive_job_waits(
    queue: QueueBackend, tmp_path: Path
) -> None:
    runner = seam.runner_for(queue, seam.counting(tmp_path), tmp_path, handback_seconds=0.02)
    batch = submit(queue, {"steps": 20, "sleep": 0.01}, priority=Priority.BATCH)
    other = submit(queue, {"steps": 1}, priority=Priority.BATCH)  # more batch work does not count
    jobs = queue.lease("svc", "w1", max_jobs=1, lease_seconds=5.0)
    runner.run_batch(jobs)
    assert queue.get(batch).state is JobState.SUCCEEDED
    assert queue.get(other).state is JobState.QUEUED and runner.counters.jobs_handed_back == 0


def test_interactive_jobs_are_never_handed_back(queue: QueueBackend, tmp_path: Path) -> None:
    runner = seam.runner_for(queue, seam.counting(tmp_path), tmp_path, handback_seconds=0.02)
    first = submit(queue, {"steps": 20, "sleep": 0.01})
    jobs = queue.lease("svc", "w1", max_jobs=1, lease_seconds=5.0)
    submit(queue, {"steps": 1})  # waiting interactive work
    runner.run_batch(jobs)
    assert queue.get(first).state is JobState.SUCCEEDED and runner.counters.jobs_handed_back == 0
