"""Real worker processes against a real SQLite file."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from swell.core.config import ServiceConfig
from swell.core.jobs import JobSpec, JobState
from swell.queue.base import QueueBackend, open_queue
from swell.worker import contract
from swell.worker.contract import Drained, WorkerArgs, WorkerState
from swell.worker.status import read_status, status_path


def spawn(
    tmp_path: Path,
    function: str,
    replica: str = "w1",
    *,
    engine: str = "callable",
    env: dict[str, str] | None = None,
    extra: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """A worker for service `svc` running `tests.worker.funcs:<function>` (or another `engine`)."""
    options = {"function": f"tests.worker.funcs:{function}"} if engine == "callable" else {}
    service = ServiceConfig(name="svc", engine=engine, options=options, max_batch_size=4, lease_seconds=1.0)
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
            *(extra or []),
        ],
        env=env,
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


def test_an_engine_that_does_not_load_says_why_in_its_status(tmp_path: Path) -> None:
    proc = spawn(tmp_path, "no_such_function")
    assert proc.wait(20) == 1
    status = read_status(status_path(tmp_path, "w1"))
    assert status is not None and status["state"] == "failed"
    assert status["error"].startswith("ConfigError: ") and "no_such_function" in status["error"]
    assert "\n" not in status["error"]


def test_a_failing_worker_keeps_secrets_out_of_its_status(tmp_path: Path) -> None:
    secret = "sk-very-secret-value"
    env = {**os.environ, "SWELL_API_KEY": secret}
    queue = open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    proc = spawn(tmp_path, f"echo_{secret}", env=env)  # the secret ends up in the error message
    assert proc.wait(20) == 1
    status = read_status(status_path(tmp_path, "w1")) or {}
    assert status["state"] == "failed" and secret not in status["error"] and "***" in status["error"]
    queue.close()


def test_files_a_worker_writes_are_private(tmp_path: Path) -> None:
    queue = queue_for(tmp_path)
    job, _ = queue.submit(JobSpec("svc", {"file": "out.bin"}))
    proc = spawn(tmp_path, "", engine="tests.worker.engines:SteppingEngine")
    try:
        wait_for(lambda: queue.get(job.id).state == JobState.SUCCEEDED)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert stat.S_IMODE(status_path(tmp_path, "w1").stat().st_mode) == 0o600
    assert stat.S_IMODE(status_path(tmp_path, "w1").parent.stat().st_mode) == 0o700
    folder = tmp_path / "files" / job.id
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "out.bin").stat().st_mode) == 0o600


def test_a_poisonous_input_fails_only_itself_in_a_worker(tmp_path: Path) -> None:
    queue = queue_for(tmp_path)
    good = [queue.submit(JobSpec("svc", {"n": i}))[0].id for i in range(3)]
    bad, _ = queue.submit(JobSpec("svc", {"poison": "crash"}, max_attempts=2))
    proc = spawn(tmp_path, "", engine="tests.worker.engines:BatchEngine")
    try:
        wait_for(lambda: queue.get(bad.id).state == JobState.DEAD)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert [queue.get(i).state for i in good] == [JobState.SUCCEEDED] * 3
    assert all(queue.get(i).attempts == 1 for i in good)
    assert "poisonous input crashed the batch" in (queue.get(bad.id).error or "")


def test_a_hung_batch_is_handed_back_and_the_worker_exits(tmp_path: Path) -> None:
    queue = queue_for(tmp_path)
    seconds = [0.01, 30, 0.01, 0.01]
    ids = [queue.submit(JobSpec("svc", {"seconds": s}, timeout=0.3))[0].id for s in seconds]
    proc = spawn(tmp_path, "sleep")
    assert proc.wait(20) == 3
    status = read_status(status_path(tmp_path, "w1")) or {}
    assert status["state"] == "dead" and status["error"].startswith("BatchTimeout: ")
    first, *rest = [queue.get(i) for i in ids]
    assert first.state == JobState.SUCCEEDED, "the callable engine reports each result as it is made"
    assert [job.state for job in rest] == [JobState.QUEUED] * 3
    assert all(job.attempts == 0 and job.batch_limit == 2 for job in rest)


def test_sigterm_past_the_grace_period_hands_the_job_back_and_exits(tmp_path: Path) -> None:
    """A preemption notice with a grace period shorter than the job: the worker stops leasing,
    hands the job back untouched before the grace period ends, says so, and exits 0."""
    queue = queue_for(tmp_path)
    held = [queue.submit(JobSpec("svc", {"seconds": 60}))[0].id for _ in range(2)]  # one batch
    proc = spawn(tmp_path, "sleep", extra=["--drain-seconds", "2"])
    wait_for(lambda: all(queue.get(i).state == JobState.LEASED for i in held))
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    later, _ = queue.submit(JobSpec("svc", {"seconds": 60}))  # a draining worker leases no more
    assert proc.wait(20) == 0
    took = time.monotonic() - signalled
    print(f"SIGTERM to exit with a 2 s grace period and 60 s jobs: {took:.2f} s")
    back = [queue.get(i) for i in held]
    assert [(j.state, j.attempts) for j in back] == [(JobState.QUEUED, 0)] * 2, "no attempt counted"
    assert queue.get(later.id).state == JobState.QUEUED
    status = contract.load(status_path(tmp_path, "w1"))
    assert status is not None and status.state is WorkerState.STOPPED and status.drained is not None
    assert (status.drained.finished, status.drained.handed_back) == (0, 2)
    assert 0 < status.drained.seconds < 2, "handed back within its grace period"


def test_sigterm_within_the_grace_period_finishes_the_job(tmp_path: Path) -> None:
    queue = queue_for(tmp_path)
    job, _ = queue.submit(JobSpec("svc", {"seconds": 0.5}))
    proc = spawn(tmp_path, "sleep", extra=["--drain-seconds", "20"])
    wait_for(lambda: queue.get(job.id).state == JobState.LEASED)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert queue.get(job.id).state == JobState.SUCCEEDED
    status = contract.load(status_path(tmp_path, "w1"))
    assert status is not None and status.drained == Drained(
        finished=1, handed_back=0, seconds=status.drained.seconds
    )


def test_the_drain_grace_period_comes_from_the_environment(tmp_path: Path) -> None:
    service = ServiceConfig(name="svc", engine="callable", options={"function": "builtins:dict"})
    argv = ["--service", service.model_dump_json(), "--replica-id", "r", "--data-dir", str(tmp_path)]
    env = {"SWELL_WORKER_QUEUE": "memory://", "SWELL_DRAIN_SECONDS": "7.5"}
    args = WorkerArgs.parse(argv, env)
    assert (args.drain_seconds, args.queue_url, args.gpu_fraction) == (7.5, "memory://", None)
    assert WorkerArgs.parse(args.argv(), env) == args
