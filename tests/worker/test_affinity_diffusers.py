"""Model affinity with the real `diffusers` engine: a job's `model` picks the checkpoint it runs on.

Two tiny random SD checkpoints (different seeds of `swell models make-tiny --kind sd`) in one
service, served by one real worker process holding both: the same input and seed give different
images on the two checkpoints and the same image twice on one.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from swell.core.config import parse_config
from swell.core.jobs import JobSpec, JobState
from swell.queue.base import open_queue
from swell.worker import contract
from swell.worker.contract import WorkerArgs
from swell.worker.status import status_path
from tests.worker.test_affinity import _env, wait_for

pytest.importorskip("diffusers")
Image = pytest.importorskip("PIL.Image")


def test_a_jobs_model_picks_the_checkpoint(tmp_path: Path) -> None:
    from swell.models.tiny import make_tiny

    first, second = make_tiny("sd", tmp_path / "sd-0", seed=0), make_tiny("sd", tmp_path / "sd-1", seed=1)
    raw = {
        "name": "svc",
        "engine": "diffusers",
        "options": {"device": "cpu"},
        "models": {"first": {"path": str(first)}, "second": {"path": str(second)}},
        "affinity": {"max_loaded": 2},
        "max_batch_size": 2,
    }
    service = parse_config({"services": [raw]}).services[0]
    url = f"sqlite:///{tmp_path / 'q.db'}"
    queue = open_queue(url)
    request = {"prompt": "a cat", "seed": 7, "steps": 3, "width": 64, "height": 64}
    jobs = [queue.submit(JobSpec("svc", request, model=m))[0] for m in ("first", "second", "first")]
    args = WorkerArgs(service, "w1", tmp_path, url, models=("first",))
    proc = subprocess.Popen([sys.executable, "-m", "swell.worker", *args.argv()], env=_env(args))
    try:
        wait_for(lambda: all(queue.get(job.id).state is JobState.SUCCEEDED for job in jobs), 180)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    pixels = [Image.open(tmp_path / "files" / job.id / "0.png").tobytes() for job in jobs]
    assert pixels[0] == pixels[2]  # the same checkpoint and seed: the same image
    assert pixels[0] != pixels[1]  # another checkpoint, the same seed: another image
    status = contract.load(status_path(tmp_path, "w1"))
    assert status is not None and set(status.models) == {"first", "second"}
    assert (status.phases["loads:first"], status.phases["loads:second"]) == (1, 1)
    queue.close()
