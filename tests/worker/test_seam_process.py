"""A real worker process (`python -m swell.worker`) on a real SQLite file, running a callable that
reports progress, streams text, writes a result file and stops when its job is cancelled."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from swell.core.config import ServiceConfig
from swell.core.jobs import JobSpec, JobState
from swell.engines.results import LocalResultStore
from swell.queue.base import QueueBackend, open_queue


def spawn(tmp_path: Path) -> subprocess.Popen[bytes]:
    options = {"function": "tests.engines.progressive:count"}
    service = ServiceConfig(
        name="svc", engine="callable", options=options, max_batch_size=1, lease_seconds=2.0
    )
    argv = ["--queue", f"sqlite:///{tmp_path / 'q.db'}", "--service", service.model_dump_json()]
    argv += ["--replica-id", "w1", "--data-dir", str(tmp_path)]
    return subprocess.Popen([sys.executable, "-m", "swell.worker", *argv])


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def text_of(queue: QueueBackend, job_id: str) -> str:
    return "".join(e.data["text"] for e in queue.events(job_id) if e.kind == "delta")


def test_a_worker_streams_progress_and_stops_a_cancelled_job(tmp_path: Path) -> None:
    queue = open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    long, _ = queue.submit(JobSpec("svc", {"steps": 3000, "sleep": 0.01}, timeout=120.0))
    proc = spawn(tmp_path)
    try:
        wait_for(lambda: len(text_of(queue, long.id).split()) >= 3)
        shown = queue.get(long.id)
        assert shown.state is JobState.LEASED
        assert 0 < shown.to_public()["progress"]["fraction"] < 1
        queue.cancel(long.id)
        wait_for(lambda: queue.get(long.id).state is JobState.CANCELLED)
        assert len(text_of(queue, long.id).split()) < 3000
        short, _ = queue.submit(JobSpec("svc", {"steps": 4, "sleep": 0.05, "preview_every": 2}))
        wait_for(lambda: queue.get(short.id).state is JobState.SUCCEEDED)
        assert queue.get(short.id).result == {"steps": 4, "file": "count.txt"}
        assert text_of(queue, short.id) == "0 1 2 3 "
        with LocalResultStore(tmp_path).open(short.id, "count.txt") as opened:
            assert opened.read() == b"4"
        with LocalResultStore(tmp_path).open(short.id, "preview.png") as opened:
            assert opened.read().startswith(b"\x89PNG")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
