"""Workers on a real full disk (a small tmpfs, mounted for the test): they keep running, keep their
heartbeat, keep the results they could not record, and record them once there is room again."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swell.core.jobs import JobSpec, JobState
from swell.engines.registry import create_engine
from swell.queue.base import open_queue
from swell.worker.runner import Runner
from swell.worker.status import read_status, status_path
from tests.worker.test_process import spawn, wait_for

DISK_BYTES = 4 * 2**20


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem of DISK_BYTES, unmounted afterwards."""
    root = tmp_path / "disk"
    root.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(root)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def fill(path: Path) -> None:
    """Write to `path` until its filesystem is full."""
    with open(path, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass


def test_a_result_that_cannot_be_recorded_is_kept_until_there_is_room(disk: Path, tmp_path: Path) -> None:
    queue = open_queue(f"sqlite:///{disk / 'q.db'}")
    filler = disk / "filler"
    first, _ = queue.submit(JobSpec("svc", {"path": str(filler)}))
    second, _ = queue.submit(JobSpec("svc", {}))
    engine = create_engine("callable", {"function": "tests.worker.funcs:fill_disk"}, data_dir=tmp_path)
    engine.load()
    runner = Runner(queue, engine, "svc", "w1", tmp_path, max_batch_size=1, lease_seconds=30.0)
    thread = threading.Thread(target=runner.serve, daemon=True)
    thread.start()
    try:
        wait_for(lambda: bool(runner.ledger.pending))  # the engine filled the disk: settle failed
        time.sleep(0.5)
        assert thread.is_alive() and queue.get(first.id).state is JobState.LEASED
        filler.unlink()
        wait_for(lambda: queue.get(second.id).state is JobState.SUCCEEDED)
    finally:
        runner.stopping.set()
        thread.join(10)
    assert (queue.get(first.id).result or {}).get("filled") is True and queue.get(first.id).attempts == 1
    assert runner.counters.jobs_done == 2 and not runner.ledger.pending


def test_a_worker_process_lives_through_a_full_disk(disk: Path) -> None:
    queue = open_queue(f"sqlite:///{disk / 'q.db'}")
    job, _ = queue.submit(JobSpec("svc", {"seconds": 1.0, "bytes": 2**20}))
    proc = spawn(disk, "sleep_big")
    status = status_path(disk, "w1")
    try:
        wait_for(lambda: queue.get(job.id).state is JobState.LEASED)
        fill(disk / "filler")
        time.sleep(3.0)  # the job finishes; its result finds no room, nor do status writes
        assert proc.poll() is None
        beat = (read_status(status) or {}).get("heartbeat", 0)
        assert time.time() - beat < 2.5  # the file's mtime still beats
        assert queue.get(job.id).state is JobState.LEASED
        (disk / "filler").unlink()
        wait_for(lambda: queue.get(job.id).state is JobState.SUCCEEDED)
        later, _ = queue.submit(JobSpec("svc", {"bytes": 10}))
        wait_for(lambda: queue.get(later.id).state is JobState.SUCCEEDED)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    assert code == 0 and queue.get(job.id).attempts == 1 and len(queue.get(job.id).result["data"]) == 2**20
    assert (read_status(status) or {}).get("state") == "stopped"
