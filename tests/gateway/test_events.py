"""`GET /v1/jobs/{id}/events` under a real uvicorn (the gateway's own guarded protocol) on loopback,
read with httpx streaming: a job's life as server-sent events, resumed with `Last-Event-ID`, ended
by the final state, kept alive by heartbeats, and let go of when the client leaves."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from swell.core.jobs import JobEvent
from swell.gateway.protocol import serving_config
from swell.queue.base import Outcome, Update
from tests.gateway.helpers import AUTH, Gateway, MakeGateway
from tests.support import free_port, wait_for

Message = dict[str, Any]


@pytest.fixture
def served(make_gateway: MakeGateway) -> Iterator[tuple[Gateway, str]]:
    gateway = make_gateway()
    port = free_port()
    config = serving_config(gateway.app, "127.0.0.1", port, gateway.app.state.limits, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200, 20, "uvicorn")
    yield gateway, base
    server.should_exit = True
    thread.join(timeout=10)


def submit(base: str) -> str:
    response = httpx.post(f"{base}/v1/jobs", json={"service": "echo", "input": {"n": 1}}, headers=AUTH)
    assert response.status_code == 202
    return str(response.json()["id"])


def parse(lines: Iterator[str]) -> Iterator[Message]:
    """SSE messages as dicts of their fields; comments as {"comment": text}."""
    message: Message = {}
    for line in lines:
        if not line:
            if message:
                yield message
            message = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            message[name] = value.removeprefix(" ")
    if message:
        yield message


def stream(
    base: str, job_id: str, headers: dict[str, str] | None = None, limit: int | None = None
) -> list[Message]:
    """The stream's event messages (up to `limit`, then the client hangs up), in order."""
    found: list[Message] = []
    url = f"{base}/v1/jobs/{job_id}/events"
    with httpx.stream("GET", url, headers={**AUTH, **(headers or {})}, timeout=20) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for message in parse(response.iter_lines()):
            if "event" in message:
                found.append(message)
            if limit is not None and len(found) >= limit:
                break
    return found


def kinds(messages: list[Message]) -> list[str]:
    return [m["event"] for m in messages]


def run_job(gateway: Gateway, job_id: str, *, cancelled: threading.Event | None = None) -> threading.Thread:
    """A stand-in worker: lease the job, report progress and text, then finish (or stop when asked)."""
    queue = gateway.queue

    def work() -> None:
        deadline = time.monotonic() + 20
        while not queue.lease("echo", "w1", max_jobs=1):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for step in range(1, 4):
            time.sleep(0.05)
            queue.report(
                "w1",
                [
                    Update(job_id, fraction=step / 4, message=f"step {step}"),
                    Update(job_id, delta=f"t{step} "),
                ],
            )
        if cancelled is not None:
            while not queue.cancel_requested([job_id]):
                time.sleep(0.02)
            queue.settle("w1", [Outcome.cancelled(job_id)])
            cancelled.set()
            return
        queue.complete(job_id, "w1", {"text": "t1 t2 t3 "})

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_a_jobs_life_streams_in_order_and_ends_with_its_final_state(served: tuple[Gateway, str]) -> None:
    gateway, base = served
    job_id = submit(base)
    worker = run_job(gateway, job_id)
    messages = stream(base, job_id)  # returns only because the server ends the stream
    worker.join(timeout=10)
    assert kinds(messages) == ["state", "state"] + ["progress", "delta"] * 3 + ["state"]
    bodies = [json.loads(m["data"]) for m in messages]
    assert [int(m["id"]) for m in messages] == [b["seq"] for b in bodies]
    assert [b["seq"] for b in bodies] == sorted({b["seq"] for b in bodies})
    assert {b["job_id"] for b in bodies} == {job_id}
    assert [b["data"]["state"] for b in bodies if b["kind"] == "state"] == ["queued", "leased", "succeeded"]
    assert "".join(b["data"]["text"] for b in bodies if b["kind"] == "delta") == "t1 t2 t3 "
    assert [b["data"]["fraction"] for b in bodies if b["kind"] == "progress"] == [0.25, 0.5, 0.75]
    assert all(set(b) == {"seq", "job_id", "kind", "at", "data"} for b in bodies)
    assert stream(base, job_id) == messages, "a finished job's history streams the same and ends"


def test_a_stream_resumes_after_last_event_id_missing_nothing_and_repeating_nothing(
    served: tuple[Gateway, str],
) -> None:
    gateway, base = served
    job_id = submit(base)
    worker = run_job(gateway, job_id)
    first = stream(base, job_id, limit=3)  # the client drops after three events
    rest = stream(base, job_id, headers={"Last-Event-ID": first[-1]["id"]})
    worker.join(timeout=10)
    whole = stream(base, job_id)
    assert first + rest == whole
    assert json.loads(rest[-1]["data"])["data"]["state"] == "succeeded"
    after_end = stream(base, job_id, headers={"Last-Event-ID": whole[-1]["id"]})
    assert after_end == [], "resuming after the end of a final job ends at once"
    by_query = httpx.get(f"{base}/v1/jobs/{job_id}/events?after={whole[1]['id']}", headers=AUTH, timeout=10)
    assert [m["id"] for m in parse(iter(by_query.text.splitlines())) if "id" in m] == [
        m["id"] for m in whole[2:]
    ]


def test_cancelling_a_running_job_shows_in_its_stream(served: tuple[Gateway, str]) -> None:
    gateway, base = served
    job_id = submit(base)
    stopped = threading.Event()
    worker = run_job(gateway, job_id, cancelled=stopped)
    wait_for(lambda: gateway.queue.get(job_id).state.value == "leased", 10, "the lease")
    asked = httpx.delete(f"{base}/v1/jobs/{job_id}", headers=AUTH)
    assert asked.status_code == 202 and asked.json()["cancel_requested"] is True
    messages = stream(base, job_id)
    worker.join(timeout=10)
    assert stopped.is_set()
    assert "cancel" in kinds(messages) and kinds(messages)[-1] == "state"
    assert json.loads(messages[-1]["data"])["data"]["state"] == "cancelled"
    assert httpx.get(f"{base}/v1/jobs/{job_id}", headers=AUTH).json()["state"] == "cancelled"


def test_a_quiet_stream_sends_heartbeats(served: tuple[Gateway, str]) -> None:
    gateway, base = served
    gateway.app.state.events.heartbeat = 0.2
    job_id = submit(base)
    seen: list[Message] = []
    with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events", headers=AUTH, timeout=20) as response:
        for message in parse(response.iter_lines()):
            seen.append(message)
            if sum("comment" in m for m in seen) >= 2:
                break
    assert [m["event"] for m in seen if "event" in m] == ["state"], "the job is still queued"
    assert any(m.get("retry") == "1000" for m in seen)


def test_the_server_lets_go_of_a_stream_whose_client_left(served: tuple[Gateway, str]) -> None:
    gateway, base = served
    job_id = submit(base)
    calls = _count_event_reads(gateway)
    with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events", headers=AUTH, timeout=20) as response:
        lines = response.iter_lines()  # kept: a generator dropped here would close the stream
        next(lines)
        wait_for(lambda: calls[0] >= 3, 10, "the stream polling")
    # the client has hung up: the server notices at its next poll and stops reading the queue
    wait_for(lambda: _settled(calls), 10, "the stream to stop polling")
    assert gateway.app.state.storage.backlog == 0


def test_unknown_jobs_and_bad_resume_points_are_refused_before_streaming(served: tuple[Gateway, str]) -> None:
    _, base = served
    missing = httpx.get(f"{base}/v1/jobs/nope/events", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["field"] == "id"
    job_id = submit(base)
    bad = httpx.get(f"{base}/v1/jobs/{job_id}/events", headers={**AUTH, "Last-Event-ID": "x1"})
    assert bad.status_code == 422 and bad.json()["field"] == "Last-Event-ID"
    assert httpx.get(f"{base}/v1/jobs/{job_id}/events?after=-1", headers=AUTH).status_code == 422
    assert httpx.get(f"{base}/v1/jobs/{job_id}/events").status_code == 401


# -- helpers ---------------------------------------------------------------------------------------


def _count_event_reads(gateway: Gateway) -> list[int]:
    """Counts the queue's `events` calls (the stream's polls) in calls[0]."""
    calls = [0]
    read = gateway.queue.events

    def counted(*args: Any, **kwargs: Any) -> list[JobEvent]:
        calls[0] += 1
        return read(*args, **kwargs)

    gateway.queue.events = counted  # type: ignore[method-assign]
    return calls


def _settled(calls: list[int]) -> bool:
    """Whether no poll happened for a second (the stream's polls are at most 0.5 s apart)."""
    before = calls[0]
    time.sleep(1.0)
    return calls[0] == before
