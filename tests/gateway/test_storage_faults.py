"""Storage faults and service health through the in-process transport: the loop never waits on a
locked or failing database, every error has the JSON shape, and the probes tell the truth."""

from __future__ import annotations

import asyncio
import errno
import socket
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from swell.core.errors import Unavailable
from swell.core.replicas import ReplicaInfo, ReplicaState
from swell.gateway.limits import GatewayLimits
from tests.gateway.helpers import Gateway, MakeGateway

pytestmark = pytest.mark.anyio

SQLITE_ONLY = pytest.mark.parametrize("make_gateway", ["sqlite"], indirect=True)


def job(service: str = "echo", **fields: Any) -> dict[str, Any]:
    return {"service": service, "input": {"n": 1}, **fields}


@pytest.fixture
def write_lock(gateway: Gateway) -> Iterator[sqlite3.Connection]:
    """Another connection that holds the database's write lock until the test rolls it back."""
    holder = sqlite3.connect(gateway.queue.path, isolation_level=None, check_same_thread=False)  # type: ignore[attr-defined]
    yield holder
    if holder.in_transaction:
        holder.execute("ROLLBACK")
    holder.close()


@SQLITE_ONLY
async def test_a_delete_waiting_on_the_write_lock_stalls_nothing_else(
    gateway: Gateway, client: httpx.AsyncClient, write_lock: sqlite3.Connection
) -> None:
    job_id = (await client.post("/v1/jobs", json=job())).json()["id"]
    write_lock.execute("BEGIN IMMEDIATE")  # held by another connection, as by another process
    delete = asyncio.ensure_future(client.delete(f"/v1/jobs/{job_id}"))
    await asyncio.sleep(0.3)
    assert not delete.done(), "the cancel waits for the write lock"

    health = await client.get("/healthz")  # liveness answers (the probe may already call storage stuck)
    assert health.status_code in (200, 503) and "status" in health.json()
    read = await client.get(f"/v1/jobs/{job_id}")  # reads do not need the write lock
    assert read.status_code == 200 and read.json()["state"] == "queued"
    assert (await client.get("/v1/jobs")).status_code == 200
    assert not delete.done(), "every answer above came while the cancel still waited"

    write_lock.execute("ROLLBACK")
    cancelled = await delete
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"


@SQLITE_ONLY
async def test_healthz_turns_503_while_storage_cannot_write_and_recovers(
    gateway: Gateway, client: httpx.AsyncClient, write_lock: sqlite3.Connection
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    write_lock.execute("BEGIN IMMEDIATE")
    failing = await _eventually(client, "/healthz", 503)
    body = failing.json()
    assert body["error"] == "Unavailable" and body["status"] == "failing" and body["reasons"]
    assert int(failing.headers["retry-after"]) >= 1
    write_lock.execute("ROLLBACK")
    assert (await _eventually(client, "/healthz", 200)).json() == {"status": "ok"}


async def _eventually(client: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    for _ in range(200):
        response = await client.get(path)
        if response.status_code == status:
            return response
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never answered {status}")


async def test_storage_errors_are_503_with_retry_after(
    gateway: Gateway, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gateway.queue, "get", disk_full)
    response = await client.get("/v1/jobs/some-id")
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    assert response.json()["error"] == "Unavailable" and "No space left" in response.json()["message"]

    monkeypatch.setattr(gateway.queue, "submit_many", disk_full)
    refused = await client.post("/v1/jobs", json=job())
    assert refused.status_code == 503 and refused.json()["error"] == "Unavailable"


async def test_an_unexpected_exception_is_a_json_500_without_a_traceback(
    gateway: Gateway, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(gateway.queue, "get", bug)
    response = await client.get("/v1/jobs/some-id")
    assert response.status_code == 500
    assert response.json() == {
        "error": "InternalError",
        "message": "the server failed; the details are in its log",
    }
    assert "Traceback" not in response.text and "secret internal detail" not in response.text


async def test_readyz_needs_writable_storage_and_a_ready_replica(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with gateway.client({}) as anonymous:  # no key needed
        waiting = await anonymous.get("/readyz")
        assert waiting.status_code == 503 and waiting.json()["status"] == "not ready"
        assert waiting.json()["reasons"] == ["service 'echo' has no ready replica"], "small has min 0"

        gateway.replicas.items = [ReplicaInfo(id="r1", service="echo", state=ReplicaState.READY, pid=1)]
        assert (await anonymous.get("/readyz")).json() == {"status": "ready"}

        def read_only() -> None:
            raise Unavailable("storage failed: OperationalError: attempt to write a readonly database")

        monkeypatch.setattr(gateway.queue, "probe", read_only)
        for path in ("/readyz", "/healthz"):
            failing = await _eventually(anonymous, path, 503)
            assert "readonly database" in failing.json()["message"]


def _crashing(replica_id: str, streak: int) -> ReplicaInfo:
    return ReplicaInfo(
        id=replica_id,
        service="echo",
        state=ReplicaState.DEAD,
        last_error="ImportError: No module named 'nowhere'",
        crash_streak=streak,
    )


async def test_a_crash_looping_service_refuses_submits_naming_the_reason(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    gateway.replicas.items = [_crashing("r1", 1)]
    assert (await client.post("/v1/jobs", json=job())).status_code == 202, "one crash is not a loop"

    gateway.replicas.items = [_crashing("r1", 3)]
    await asyncio.sleep(1.1)  # the gateway reads the replica list at most once a second
    refused = await client.post("/v1/jobs", json=job())
    assert refused.status_code == 503 and refused.json()["field"] == "service"
    assert "No module named 'nowhere'" in refused.json()["message"]
    assert int(refused.headers["retry-after"]) >= 1

    services = {s["name"]: s for s in (await client.get("/v1/services")).json()["services"]}
    (replica,) = services["echo"]["replicas"]
    assert (replica["last_error"], replica["crash_streak"]) == ("ImportError: No module named 'nowhere'", 3)
    assert (await client.post("/v1/jobs", json=job("small"))).status_code == 202, "other services serve"


async def test_a_hanging_resolver_fails_only_the_submits_with_a_callback(
    make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No real resolver can hang offline, so `getaddrinfo` is replaced by one that blocks until the
    test ends: a fake of the network, nothing else. Twelve such submits fill the lookup pool; plain
    submits beside them are answered at once and the callback ones fail alone with a 422."""
    hang = threading.Event()

    def never_answers(*args: Any, **kwargs: Any) -> Any:
        hang.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", never_answers)
    limits = GatewayLimits(dns_threads=2, dns_timeout_seconds=1.0)
    gateway = make_gateway(limits=limits)
    try:
        async with gateway.client() as client:
            slow = [
                asyncio.ensure_future(client.post("/v1/jobs", json=job(callback_url=f"http://h{n}.example/")))
                for n in range(12)
            ]
            await asyncio.sleep(0.1)
            plain = [await client.post("/v1/jobs", json=job()) for _ in range(5)]
            assert [r.status_code for r in plain] == [202] * 5
            assert not any(task.done() for task in slow), "the plain submits did not wait for DNS"
            answers = await asyncio.gather(*slow)
    finally:
        hang.set()
    assert {r.status_code for r in answers} == {422}
    assert {r.json()["field"] for r in answers} == {"callback_url"}
    assert "did not resolve within 1 s" in answers[0].json()["message"]
