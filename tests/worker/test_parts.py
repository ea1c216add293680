"""The worker's pure parts: hand-back rules, back-off, status reading and error lines."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from swell.core.jobs import Job, JobSpec
from swell.worker.batch import BatchRun, Exited, Finished, Reported, Started, call_deadline
from swell.worker.status import describe_error, read_status, touch_status, write_status
from swell.worker.storage import Backoff


def jobs(n: int, timeout: float = 2.0) -> tuple[Job, ...]:
    return tuple(Job.create(JobSpec("svc", {"i": i}, timeout=timeout), now=0.0) for i in range(n))


def test_a_call_may_run_for_the_sum_of_its_jobs_timeouts() -> None:
    assert call_deadline(jobs(4, timeout=2.5), started=10.0) == 20.0


def test_abandon_halves_the_hung_call_and_keeps_the_rest_whole() -> None:
    batch = jobs(8)
    run = BatchRun(batch, started=0.0)
    run.apply(Started(batch[:4], at=0.0))
    assert [o.job_id for o in run.apply(Finished(batch[:4], tuple({} for _ in range(4))))] == [
        j.id for j in batch[:4]
    ]
    run.apply(Started(batch[4:6], at=1.0))
    assert run.deadline == 5.0
    run.apply(Reported(batch[4], {"early": True}))
    outcomes = {o.job_id: o for o in run.abandon()}
    assert outcomes[batch[4].id].result == {"early": True}
    assert outcomes[batch[5].id].split == 1  # in the hung call: at most half of it
    assert outcomes[batch[6].id].split == 2 and outcomes[batch[7].id].split == 2  # never started
    assert run.open_ids == []


def test_a_hung_call_of_one_is_that_jobs_own_timeout() -> None:
    (job,) = jobs(1, timeout=0.5)
    (outcome,) = BatchRun((job,), started=0.0).abandon()
    assert outcome.split is None and outcome.retryable and "timeout of 0.5 s" in (outcome.error or "")


def test_jobs_left_without_a_result_fail_retryable() -> None:
    batch = jobs(2)
    run = BatchRun(batch, started=0.0)
    run.apply(Finished(batch[:1], ({},)))
    assert run.apply(Exited()) == [] and run.deadline == float("inf")
    (left,) = run.leftovers()
    assert left.job_id == batch[1].id and left.retryable and "without a result" in (left.error or "")


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(first=0.1, cap=0.5)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next() == 0.1


def test_a_touched_status_file_reads_as_a_fresh_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / "replicas" / "w1.json"
    write_status(path, {"state": "busy", "heartbeat": 100.0})
    assert read_status(path) == {"state": "busy", "heartbeat": os.stat(path).st_mtime}
    os.utime(path, (50.0, 50.0))
    assert (read_status(path) or {})["heartbeat"] == 100.0
    touch_status(path)
    assert time.time() - (read_status(path) or {})["heartbeat"] < 60
    assert read_status(tmp_path / "none.json") is None


def test_error_lines_are_one_line_short_and_without_secrets() -> None:
    environ = {
        "SWELL_API_KEY": "key-123456",
        "SWELL_DATASETS": json.dumps({"w": {"source": "s3://b", "secret_access_key": "AKIASECRET"}}),
        "HOME": "/root",
    }
    error = RuntimeError("failed\nwith key-123456 at https://user:pw@host/x and AKIASECRET in /root")
    line = describe_error(error, environ)
    assert line == "RuntimeError: failed with *** at https://***@host/x and *** in /root"
    assert len(describe_error(ValueError("x" * 5000), {})) == 400
