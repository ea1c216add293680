"""The serving path end to end: a real `swell up`, real workers, a real webhook receiver on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.support import wait_for

HERE = Path(__file__).parent

CONFIG = """
services:
  - name: double
    engine: callable
    options: {function: "e2e_jobs:double"}
    replicas: {min: 3, max: 3}
    max_batch_size: 4
    lease_seconds: 2
    max_attempts: 5
brain: {mode: "off"}
gateway: {max_loop_lag_seconds: 30}  # a busy CI machine must not shed these tests' requests
"""


@dataclass
class Receiver:
    """A webhook receiver on loopback that records every delivery."""

    url: str
    deliveries: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    box = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with box.lock:
                box.deliveries.append((dict(self.headers.items()), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield box
    server.shutdown()


def _host_port(url: str) -> str:
    """`127.0.0.1:PORT` of the receiver: an allow-list entry that admits that one port."""
    return url.split("//", 1)[1].split("/", 1)[0]


def _signed(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The documented scheme, checked independently: `t=<ts>,v1=<hmac(secret, "<ts>." + body)>`, the
    same `ts` in `X-Swell-Timestamp`, within five minutes of now."""
    fields = dict(item.split("=", 1) for item in headers.get("X-Swell-Signature", "").split(","))
    timestamp = headers.get("X-Swell-Timestamp", "")
    if fields.get("t") != timestamp or abs(time.time() - int(timestamp)) > 300:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


@pytest.mark.slow
def test_200_jobs_with_webhooks_survive_a_worker_sigkill(
    start_swell, receiver: Receiver, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    swell = start_swell(
        CONFIG.replace("e2e_jobs:double", "e2e_runs:double_and_record"),
        env={"SWELL_WEBHOOK_SECRET": "hook-secret", "SWELL_CALLBACK_ALLOW_HOSTS": _host_port(receiver.url)},
        pythonpath=[HERE],
    )
    swell.wait_ready(3)
    ids: list[str] = []
    with swell.client() as client:
        for n in range(200):
            payload = {"n": n, "sleep": 0.5, "log": str(runs)}
            body = {"service": "double", "input": payload, "callback_url": receiver.url}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])

        victim = _busy_worker(swell)
        os.kill(victim, signal.SIGKILL)

        wait_for(lambda: _succeeded(client, ids) == len(ids), 120, "every job to succeed", interval=0.5)
        jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]

    assert [job["result"] for job in jobs] == [{"n": 2 * n} for n in range(200)]
    assert {job["state"] for job in jobs} == {"succeeded"}, "a batch's expired lease kills no job"
    lines = [line.split() for line in runs.read_text().splitlines()]
    by_victim = {(what, n) for what, n, pid in lines if int(pid) == victim}
    held = {n for what, n in by_victim if what == "start"} - {n for what, n in by_victim if what == "done"}
    elsewhere = {n for what, n, pid in lines if what == "done" and int(pid) != victim}
    assert held and held <= elsewhere, "every job the killed worker held ran again in another worker"

    wait_for(lambda: len(receiver.deliveries) >= len(ids), 60, "every webhook", interval=0.2)
    bodies = [json.loads(body) for _, body in receiver.deliveries]
    assert all(_signed("hook-secret", headers, body) for headers, body in receiver.deliveries)
    assert sorted(b["id"] for b in bodies) == sorted(ids), "each job id exactly once among the deliveries"
    assert {b["state"] for b in bodies} == {"succeeded"}
    by_id = {b["id"]: b for b in bodies}
    assert by_id[ids[7]]["result"] == {"n": 14}
    with swell.client() as client:
        assert client.get(f"/v1/jobs/{ids[0]}").json()["webhook"]["state"] == "delivered"


def _busy_worker(swell) -> int:
    pids: list[int] = []

    def busy() -> bool:
        pids[:] = [
            r["pid"] for s in swell.services() for r in s["replicas"] if r["state"] == "busy" and r["pid"]
        ]
        return bool(pids)

    wait_for(busy, 30, "a busy worker")
    return pids[0]


def _succeeded(client: httpx.Client, ids: list[str]) -> int:
    services = client.get("/v1/services").json()["services"]
    return int(next(s for s in services if s["name"] == "double")["queue"].get("succeeded", 0))


@pytest.mark.slow
def test_restart_loses_no_job(start_swell, tmp_path: Path) -> None:
    """Queued, running and finished jobs all survive stopping and restarting `swell up`."""
    data = tmp_path / "data"
    config = CONFIG.replace("min: 3, max: 3", "min: 1, max: 1").replace(
        "max_batch_size: 4", "max_batch_size: 1"
    )
    first = start_swell(config, data_dir=data, pythonpath=[HERE])
    first.wait_ready(1)
    with first.client() as client:
        ids = [
            client.post("/v1/jobs", json={"service": "double", "input": {"n": n, "sleep": 0.2}}).json()["id"]
            for n in range(20)
        ]
        wait_for(
            lambda: client.get(f"/v1/jobs/{ids[0]}").json()["state"] == "succeeded", 30, "a first result"
        )
    assert first.stop(signal.SIGTERM) == 0

    second = start_swell(config, data_dir=data, pythonpath=[HERE])
    with second.client() as client:
        wait_for(
            lambda: all(client.get(f"/v1/jobs/{i}").json()["state"] == "succeeded" for i in ids),
            60,
            "every job to finish after the restart",
            interval=0.3,
        )
        assert [client.get(f"/v1/jobs/{i}").json()["result"]["n"] for i in ids] == [2 * n for n in range(20)]


@pytest.mark.slow
def test_workers_exit_when_swell_up_is_killed(start_swell) -> None:
    """A supervisor killed outright leaves no worker serving unwatched: each notices and drains."""
    swell = start_swell(CONFIG.replace("min: 3, max: 3", "min: 2, max: 2"), pythonpath=[HERE])
    swell.wait_ready(2)
    pids = [r["pid"] for s in swell.services() for r in s["replicas"]]
    assert swell.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_for(lambda: not any(_alive(pid) for pid in pids), 15, "the orphaned workers to exit")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_the_serving_path_on_redis(start_swell) -> None:
    """The same `swell up` with its queue on a real Redis server instead of SQLite."""
    url = os.environ.get("SWELL_TEST_REDIS_URL")
    if not url:
        pytest.skip("SWELL_TEST_REDIS_URL is not set")
    import redis

    url = url.rsplit("/", 1)[0] + "/7"  # a database of its own, emptied before and after
    redis.Redis.from_url(url).flushdb()
    try:
        swell = start_swell(
            CONFIG.replace("min: 3, max: 3", "min: 2, max: 2"),
            env={"SWELL_QUEUE_URL": url},
            pythonpath=[HERE],
        )
        swell.wait_ready(2)
        with swell.client() as client:
            ids = [
                client.post("/v1/jobs", json={"service": "double", "input": {"n": n}}).json()["id"]
                for n in range(40)
            ]
            waited = client.post("/v1/jobs", json={"service": "double", "input": {"n": 50}, "wait": 30})
            assert (waited.status_code, waited.json()["result"]) == (200, {"n": 100})
            wait_for(lambda: _succeeded(client, ids) >= len(ids) + 1, 60, "every job on redis", interval=0.2)
            assert [client.get(f"/v1/jobs/{i}").json()["result"]["n"] for i in ids] == [
                2 * n for n in range(40)
            ]
        assert swell.stop(signal.SIGTERM) == 0
    finally:
        redis.Redis.from_url(url).flushdb()


STREAMING = """
services:
  - name: words
    engine: callable
    options: {function: "e2e_jobs:count_until_cancelled", batch: false}
    replicas: {min: 1, max: 1}
brain: {mode: "off"}
"""


def _sse(lines: Iterator[str]) -> Iterator[dict[str, object]]:
    """The events of a server-sent event stream, each its `data` JSON."""
    for line in lines:
        if line.startswith("data:"):
            yield json.loads(line.removeprefix("data:"))


@pytest.mark.slow
def test_a_running_job_streams_its_words_and_stops_when_cancelled(start_swell) -> None:
    """A real worker streams text and progress into the job's events; DELETE stops it at its next
    step, the stream ends with `cancelled`, and the worker goes on to the next job."""
    swell = start_swell(STREAMING, pythonpath=[HERE])
    swell.wait_ready(1)
    with swell.client() as client:
        job_id = client.post("/v1/jobs", json={"service": "words", "input": {"limit": 600}}).json()["id"]
        seen: list[dict[str, object]] = []
        with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=60) as response:
            assert response.status_code == 200
            for event in _sse(response.iter_lines()):
                seen.append(event)
                if event["kind"] == "delta" and sum(e["kind"] == "delta" for e in seen) == 3:
                    asked = client.delete(f"/v1/jobs/{job_id}")
                    assert asked.status_code == 202 and asked.json()["cancel_requested"] is True
        # the stream ended by itself, after the final state
        states = [e["data"]["state"] for e in seen if e["kind"] == "state"]  # type: ignore[index]
        assert states == ["queued", "leased", "cancelled"]
        assert "cancel" in [e["kind"] for e in seen]
        text = "".join(e["data"]["text"] for e in seen if e["kind"] == "delta")  # type: ignore[index]
        words = text.split()
        assert words == [str(n) for n in range(len(words))] and 3 <= len(words) < 600
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "cancelled" and 0 < job["progress"]["fraction"] < 1
        short = client.post("/v1/jobs", json={"service": "words", "input": {"limit": 3}, "wait": 30}).json()
        assert (short["state"], short["result"]) == ("succeeded", {"words": 3})
    assert swell.stop(signal.SIGTERM) == 0
