"""Real worker processes against a real SQLite file."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from swell.core.config import ServiceConfig
from swell.core.jobs import JobSpec, JobState
from swell.queue.base import QueueBackend, open_queue
from swell.worker.status import read_status, status_path


def spawn(tmp_path: Path, function: str, replica: str = "w1") -> subprocess.Popen[bytes]:
    service = ServiceConfig(
        name="svc",
        engine="callable",
        options={"function": f"tests.worker.funcs:{function}"},
        max_batch_size=4,
        lease_seconds=1.0,
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "swell.worker",
            "--queue",
            f"sqlite:///{tmp_path / 'q.db'}",
            "--service",
            service.model_dump_json(),
            "--replica-id",
            replica,
            "--data-dir",
            str(tmp_path),
        ]
    )


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def queue_for(tmp_path: Path) -> QueueBackend:
    return open_queue(f"sqlite:///{tmp_path / 'q.db'}")


def test_worker_drains_jobs_and_stops_on_sigterm(tmp_path: Path) -> None:
    queue = queue_for(tmp_path)
    ids = [queue.submit(JobSpec("svc", {"i": i}))[0].id for i in range(20)]
    proc = spawn(tmp_path, "echo")
    wait_for(lambda: all(queue.get(i).state == JobState.SUCCEEDED for i in ids))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    status = read_status(status_path(tmp_path, "w1"))
    assert status is not None and status["state"] == "stopped" and status["jobs_done"] == 20
    assert json.dumps(status)


def test_sigterm_mid_job_finishes_it(tmp_path: Path) -> None:
    queue = queue_for(tmp_path)
    job, _ = queue.submit(JobSpec("svc", {"seconds": 1.0}))
    proc = spawn(tmp_path, "sleep")
    wait_for(lambda: queue.get(job.id).state == JobState.LEASED)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert queue.get(job.id).state == JobState.SUCCEEDED


def test_sigkill_mid_job_is_redelivered(tmp_path: Path) -> None:
    queue = queue_for(tmp_path)
    job, _ = queue.submit(JobSpec("svc", {"seconds": 1.0}))
    first = spawn(tmp_path, "sleep", "w1")
    wait_for(lambda: queue.get(job.id).state == JobState.LEASED)
    first.kill()
    first.wait()
    second = spawn(tmp_path, "sleep", "w2")
    try:
        wait_for(lambda: queue.get(job.id).state == JobState.SUCCEEDED)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(10)
    assert queue.get(job.id).attempts == 2


def test_timeout_fails_the_job_and_exits(tmp_path: Path) -> None:
    queue = queue_for(tmp_path)
    job, _ = queue.submit(JobSpec("svc", {"seconds": 30}, timeout=0.5, max_attempts=3))
    proc = spawn(tmp_path, "sleep")
    assert proc.wait(20) != 0
    after = queue.get(job.id)
    assert after.attempts == 1 and "TimeoutError" in (after.error or "")
    assert after.state == JobState.QUEUED
