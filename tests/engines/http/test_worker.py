"""The http engine in a real worker process over a real SQLite queue, fronting a loopback server:
results, streamed text in the job's events (each completion's of a job of `n` > 1 with its index), a
cancel that closes a running stream."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from swell.core.config import ServiceConfig
from swell.core.jobs import JobSpec, JobState
from swell.queue.base import open_queue
from tests.engines.http.servers import FakeOpenAI
from tests.support import wait_for

ENGINE = "swell.engines.http.spec:SPEC"


def test_a_worker_fronts_an_openai_server(oai: FakeOpenAI, tmp_path: Path) -> None:
    service = ServiceConfig(name="llm", engine=ENGINE, options={"mode": "openai", "url": oai.url},
                            max_batch_size=4, lease_seconds=5.0)  # fmt: skip
    queue = open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    short, _ = queue.submit(JobSpec("llm", {"prompt": "hello", "max_tokens": 20}))
    pair, _ = queue.submit(JobSpec("llm", {"prompt": "two", "max_tokens": 20, "n": 2}))
    command = [
        sys.executable, "-m", "swell.worker",
        "--queue", f"sqlite:///{tmp_path / 'q.db'}",
        "--service", service.model_dump_json(),
        "--replica-id", "w1",
        "--data-dir", str(tmp_path),
    ]  # fmt: skip
    worker = subprocess.Popen(command)
    try:
        wait_for(lambda: queue.get(short.id).state == JobState.SUCCEEDED, 60, "the short job")
        wait_for(lambda: queue.get(pair.id).state == JobState.SUCCEEDED, 60, "the job of two")
        long, _ = queue.submit(JobSpec("llm", {"prompt": "go on", "max_tokens": 100000}))
        wait_for(lambda: any(e.kind == "delta" for e in queue.events(long.id)), 60, "streamed text")
        queue.cancel(long.id)
        wait_for(lambda: queue.get(long.id).state == JobState.CANCELLED, 60, "the cancel")
        wait_for(lambda: oai.disconnects >= 1, 30, "the stream closed")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    result = queue.get(short.id).result or {}
    streamed = "".join(e.data["text"] for e in queue.events(short.id) if e.kind == "delta")
    assert streamed == result["choices"][0]["text"] and result["usage"]["completion_tokens"] == 20
    deltas = [e.data for e in queue.events(pair.id) if e.kind == "delta"]
    texts = ["".join(d["text"] for d in deltas if d.get("index", 0) == i) for i in (0, 1)]
    assert texts == [c["text"] for c in (queue.get(pair.id).result or {})["choices"]]
    assert texts[1].startswith("1:tok0 ") and all(d.get("index") in (None, 1) for d in deltas)
    queue.close()
