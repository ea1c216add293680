"""The preStop hook's drain: a real worker process gets SIGTERM, finishes its job, and exits."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from swell.core.config import ServiceConfig
from swell.core.jobs import JobSpec, JobState
from swell.deploy import drain
from swell.queue.base import open_queue
from swell.worker.contract import WorkerState
from swell.worker.contract import load as load_status
from swell.worker.status import status_path


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def spawn_worker(tmp_path: Path) -> subprocess.Popen[bytes]:
    service = ServiceConfig(
        name="svc", engine="callable", options={"function": "tests.worker.funcs:sleep"}, lease_seconds=2.0
    )
    argv = [sys.executable, "-m", "swell.worker", "--queue", f"sqlite:///{tmp_path / 'q.db'}"]
    argv += ["--service", service.model_dump_json(), "--replica-id", "w1", "--data-dir", str(tmp_path)]
    return subprocess.Popen([*argv, "--drain-seconds", "20"])


def test_command_lines_of_workers_are_recognised() -> None:
    assert drain.is_worker(["/usr/bin/python3", "-m", "swell.worker", "--service", "{}"])
    assert drain.is_worker(["python", "-u", "-m", "swell.worker"])
    assert not drain.is_worker(["python", "-m", "swell.workers"])
    assert not drain.is_worker(["grep", "-m", "swell.worker"])
    assert not drain.is_worker(["ray::ReplicaHost.status"])


def test_drain_finishes_the_running_job_and_waits_for_the_exit(tmp_path: Path) -> None:
    queue = open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    job, _ = queue.submit(JobSpec("svc", {"seconds": 1.5}))
    proc = spawn_worker(tmp_path)
    try:
        wait_for(lambda: queue.get(job.id).state == JobState.LEASED)
        assert proc.pid in drain.worker_pids()  # found by its command line in /proc
        # only our own worker: this machine may run other people's
        report = drain.drain([proc.pid], timeout=20)
        assert (report.signalled, report.exited, report.left) == (1, 1, 0)
        assert proc.wait(5) == 0
        assert queue.get(job.id).state == JobState.SUCCEEDED  # finished inside the grace period
        status = load_status(status_path(tmp_path, "w1"))
        assert status is not None and status.state == WorkerState.STOPPED
        assert status.drained is not None and status.drained.finished == 1 and status.drained.handed_back == 0
        assert report.seconds >= 0.0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def test_drain_reports_what_is_left_at_the_timeout(tmp_path: Path) -> None:
    """A process that ignores SIGTERM is reported as left (the hook exits 1; the kubelet then kills)."""
    code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True)"
    code += "; time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        report = drain.drain([proc.pid], timeout=0.5)
        assert (report.signalled, report.exited, report.left) == (1, 0, 1)
        assert report.seconds >= 0.5
    finally:
        proc.kill()
        proc.wait()


def test_no_ray_address_skips_the_ray_step_and_main_prints_one_json_line(tmp_path: Path) -> None:
    """`main` end to end, scanning an empty proc directory (never this machine's other workers)."""
    assert drain.drain_ray_node(None, 30) == "skipped"
    (tmp_path / "proc").mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "swell.deploy.drain",
            "--timeout",
            "1",
            "--no-ray",
            "--proc",
            str(tmp_path / "proc"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (
        report["signalled"] == 0
        and report["ray"] == "skipped"
        and set(report) == {"signalled", "exited", "left", "seconds", "ray"}
    )
