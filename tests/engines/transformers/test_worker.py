"""The transformers engine in a real worker process over a real SQLite queue: results, streamed
text in the job's events, a cancel that stops a running generation."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from swell.core.config import ServiceConfig
from swell.core.jobs import JobSpec, JobState
from swell.queue.base import open_queue
from tests.support import wait_for

ENGINE = "swell.engines.transformers.spec:SPEC"  # the spec by import string, as a user engine is named


def spawn(tmp_path: Path, model: Path) -> subprocess.Popen[bytes]:
    service = ServiceConfig(
        name="llm", engine=ENGINE, options={"path": str(model)}, max_batch_size=4, lease_seconds=5.0
    )
    command = [
        sys.executable, "-m", "swell.worker",
        "--queue", f"sqlite:///{tmp_path / 'q.db'}",
        "--service", service.model_dump_json(),
        "--replica-id", "w1",
        "--data-dir", str(tmp_path),
    ]  # fmt: skip
    return subprocess.Popen(command)


def test_a_worker_generates_streams_and_cancels(tiny_llm: Path, tmp_path: Path) -> None:
    queue = open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    short = [
        queue.submit(JobSpec("llm", {"prompt": "hello world", "max_tokens": 24, "temperature": 0.0}))[0],
        queue.submit(
            JobSpec("llm", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "n": 2})
        )[0],
    ]
    worker = spawn(tmp_path, tiny_llm)
    try:
        wait_for(
            lambda: all(queue.get(job.id).state == JobState.SUCCEEDED for job in short), 120, "the short jobs"
        )
        long, _ = queue.submit(JobSpec("llm", {"prompt": "the cat", "max_tokens": 1000, "temperature": 0.0}))
        wait_for(lambda: any(e.kind == "delta" for e in queue.events(long.id)), 60, "streamed text")
        queue.cancel(long.id)
        wait_for(lambda: queue.get(long.id).state == JobState.CANCELLED, 60, "the cancel")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0

    first = queue.get(short[0].id)
    assert first.result is not None
    choice = first.result["choices"][0]
    assert choice["finish_reason"] == "length" and first.result["usage"]["completion_tokens"] == 24
    streamed = "".join(e.data["text"] for e in queue.events(short[0].id) if e.kind == "delta")
    assert streamed == choice["text"]
    progress = [e.data["fraction"] for e in queue.events(short[0].id) if e.kind == "progress"]
    assert progress and progress == sorted(progress)
    second = queue.get(short[1].id).result or {}
    assert len(second["choices"]) == 2 and second["usage"]["prompt_tokens"] > 0
    cancelled_text = "".join(e.data["text"] for e in queue.events(long.id) if e.kind == "delta")
    assert len(cancelled_text) > 0 and queue.get(long.id).state == JobState.CANCELLED
    queue.close()
