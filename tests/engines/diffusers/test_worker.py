"""The diffusers engine in a real worker process (`python -m swell.worker`) on a real SQLite queue."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from PIL import Image

from swell.core.config import ServiceConfig
from swell.core.jobs import JobSpec, JobState
from swell.queue.base import open_queue
from tests.worker.test_process import wait_for

ENGINE = "swell.engines.diffusers.spec:SPEC"  # the registry's "diffusers" row names this spec


def test_a_worker_generates_pngs_for_queued_jobs(tiny: dict[str, Path], tmp_path: Path) -> None:
    queue = open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    options = {"path": str(tiny["sd"]), "loras": str(tiny["loras"]), "device": "cpu"}
    service = ServiceConfig(name="svc", engine=ENGINE, options=options, max_batch_size=4, lease_seconds=5.0)
    jobs = [
        queue.submit(
            JobSpec("svc", {"prompt": f"cat {i}", "seed": i, "steps": 3, "width": 64, "height": 64})
        )[0]
        for i in range(3)
    ]
    styled, _ = queue.submit(
        JobSpec("svc", {"prompt": "x", "loras": [{"name": "tiny-0"}], "steps": 3, "width": 64, "height": 64})
    )
    argv = ["--queue", f"sqlite:///{tmp_path / 'q.db'}", "--service", service.model_dump_json()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "swell.worker", *argv, "--replica-id", "w1", "--data-dir", str(tmp_path)]
    )
    try:
        wait_for(lambda: all(queue.get(j.id).state == JobState.SUCCEEDED for j in [*jobs, styled]), 120)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    for index, job in enumerate(jobs):
        result = queue.get(job.id).result or {}
        assert result["seeds"] == [index] and result["images"][0]["file"] == "0.png"
        image = Image.open(tmp_path / "files" / job.id / "0.png")
        assert image.size == (64, 64) and f"Seed: {index}" in image.text["parameters"]  # type: ignore[attr-defined]
    assert "<lora:tiny-0:1>" in (queue.get(styled.id).result or {})["parameters"]
    queue.close()
