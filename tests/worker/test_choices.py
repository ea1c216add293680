"""A job of several completions streamed through a real worker process over a real SQLite file:
each completion's text reaches the job's events on its own, with its index, before the final state."""

from __future__ import annotations

import signal
from pathlib import Path

from swell.core.jobs import JobEvent, JobSpec, JobState
from tests.worker.test_process import queue_for, spawn, wait_for

ENGINE = "tests.worker.choices:ChoicesEngine"


def texts(events: list[JobEvent], n: int) -> list[str]:
    """Each completion's streamed text, joined from the job's delta events by index."""
    deltas = [e.data for e in events if e.kind == "delta"]
    return ["".join(d["text"] for d in deltas if d.get("index", 0) == i) for i in range(n)]


def test_every_completion_streams_through_a_worker_with_its_index(tmp_path: Path) -> None:
    queue = queue_for(tmp_path)
    three = queue.submit(JobSpec("svc", {"n": 3, "steps": 12, "sleep": 0.1}))[0].id
    one = queue.submit(JobSpec("svc", {"steps": 3}))[0].id  # the same call: a job of one completion
    proc = spawn(tmp_path, "", engine=ENGINE)
    try:
        wait_for(lambda: all(queue.get(i).state is JobState.SUCCEEDED for i in (three, one)), 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    events = queue.events(three)
    result = queue.get(three).result or {}
    assert texts(events, 3) == [c["text"] for c in result["choices"]]
    assert texts(events, 3)[2].startswith("2.0 2.1 "), "each completion's own text, in order"
    deltas = [e for e in events if e.kind == "delta"]
    assert all("index" not in e.data for e in deltas if e.data["text"].startswith("0."))
    assert all(len([e for e in deltas if e.data.get("index", 0) == i]) > 1 for i in range(3)), (
        "streamed while the job ran (12 steps of 0.1 s, reports every 0.2 s), not only at its end"
    )
    final = next(e for e in events if e.kind == "state" and e.data["state"] == "succeeded")
    assert all(e.seq < final.seq for e in deltas)
    alone = [e.data for e in queue.events(one) if e.kind == "delta"]
    assert texts(queue.events(one), 1) == ["0.0 0.1 0.2 "] and all("index" not in d for d in alone)
    queue.close()
