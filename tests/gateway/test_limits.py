"""The gateway's production limits under a real uvicorn on loopback, driven with raw sockets: idle
sockets, a connection flood, a 200 MB header, slowloris clients, and load shedding."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from swell.gateway.limits import GatewayLimits
from swell.gateway.protocol import serving_config
from tests.gateway.helpers import AUTH, Gateway, MakeGateway
from tests.support import free_port, wait_for

SQLITE_ONLY = pytest.mark.parametrize("make_gateway", ["sqlite"], indirect=True)
pytestmark = SQLITE_ONLY

LIMITS = GatewayLimits(
    max_header_bytes=8192, max_connections=40, keep_alive_seconds=1.0, read_timeout_seconds=1.0
)


@contextmanager
def serving(gateway: Gateway, limits: GatewayLimits) -> Iterator[tuple[str, int]]:
    port = free_port()
    server = uvicorn.Server(serving_config(gateway.app, "127.0.0.1", port, limits, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200, 20, "uvicorn")
    try:
        yield base, port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def served(make_gateway: MakeGateway) -> Iterator[tuple[str, int]]:
    with serving(make_gateway(limits=LIMITS), LIMITS) as where:
        yield where


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one answer the server writes before it closes."""
    data = b""
    while chunk := _recv(sock):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def test_idle_sockets_are_capped_then_closed_and_requests_keep_answering(served: tuple[str, int]) -> None:
    base, port = served
    idle = [connect(port) for _ in range(120)]  # three times the cap, none sending a byte
    try:
        refused = 0
        for sock in idle[LIMITS.max_connections :]:
            status, headers, body = read_answer(sock)  # answered at once and closed, never left hanging
            assert status == 503 and int(headers["retry-after"]) >= 1
            assert json.loads(body)["error"] == "Unavailable"
            refused += 1
        assert refused == 120 - LIMITS.max_connections
        # the ones inside the cap are closed by the idle deadline, and then the gateway serves again
        assert all(_recv(sock) == b"" for sock in idle[: LIMITS.max_connections])
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_200_mb_header_is_refused_early_and_costs_little_memory(served: tuple[str, int]) -> None:
    _, port = served
    chunk = b"a" * (1 << 20)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; server and client alike
    sock = connect(port)
    sent = 0
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        while sent < 200 * len(chunk):
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert sent < 100 * len(chunk), "the server closed the connection long before 200 MB arrived"
    assert grown_mib < 64, f"peak memory grew {grown_mib:.0f} MiB"


def test_headers_over_the_limit_get_a_json_answer(served: tuple[str, int]) -> None:
    _, port = served
    sock = connect(port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    status, headers, body = read_answer(sock)
    sock.close()
    assert status == 431 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "HeadersTooLarge" and "8192 bytes" in json.loads(body)["message"]
    sock = connect(port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n")  # no colon: malformed
    status, _, body = read_answer(sock)
    sock.close()
    assert status == 400 and json.loads(body)["error"] == "BadRequest"


@pytest.mark.parametrize(
    ("head", "trickle"),
    [
        (b"GET /healthz HTTP/1.1\r\n", b"X-Slow: " + b"a" * 200),  # headers a byte at a time
        (
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n"
            b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n",
            b" " * 200,  # a body a byte at a time
        ),
    ],
)
def test_a_slowloris_client_is_cut_off_with_408(served: tuple[str, int], head: bytes, trickle: bytes) -> None:
    _, port = served
    sock = connect(port)
    sock.sendall(head)
    started = time.monotonic()
    trickled = 0
    try:
        for byte in trickle:
            sock.sendall(bytes([byte]))
            trickled += 1
            time.sleep(0.05)  # 200 bytes at this pace would take 10 s
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, _, body = read_answer(sock)
    sock.close()
    assert trickled < len(trickle), "the server stopped reading before the slow request was whole"
    assert status == 408 and json.loads(body)["error"] == "RequestTimeout"
    assert time.monotonic() - started < 9


def test_a_request_after_a_slow_start_within_the_deadline_is_served(served: tuple[str, int]) -> None:
    _, port = served
    sock = connect(port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    time.sleep(0.3)
    sock.sendall(b"Host: x\r\nConnection: close\r\n\r\n")
    status, _, body = read_answer(sock)
    sock.close()
    assert status == 200 and json.loads(body) == {"status": "ok"}


def test_a_lagging_loop_sheds_v1_requests_with_503_but_answers_probes(make_gateway: MakeGateway) -> None:
    limits = GatewayLimits(max_loop_lag_seconds=0.1)
    gateway = make_gateway(limits=limits)

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        monitor = asyncio.create_task(gateway.app.state.lag.run())
        async with gateway.client() as client:
            assert (await client.get("/v1/jobs")).status_code == 200
            for _ in range(3):  # block the loop: a loop this busy cannot serve its clients in time
                time.sleep(0.3)
                await asyncio.sleep(0.06)
            answers = [await client.post("/v1/jobs", json={"service": "echo", "input": {}}) for _ in range(4)]
            health = await client.get("/healthz")
            await asyncio.sleep(1.5)  # the loop is punctual again: the door reopens
            served = await client.get("/v1/jobs")
        monitor.cancel()
        [shed, *_] = [a for a in answers if a.status_code == 503]
        assert sum(a.status_code == 503 for a in answers) >= 3, "most requests are shed, not all"
        return shed, health, served

    shed, health, served = asyncio.run(scenario())
    assert shed.status_code == 503 and int(shed.headers["retry-after"]) >= 1
    assert shed.json()["error"] == "Unavailable" and "overloaded" in shed.json()["message"]
    assert health.status_code == 200
    assert served.status_code == 200
    assert sum(gateway.queue.depth().get("echo", {}).values()) <= 1, "shed submits stored nothing"


def test_submits_answer_within_the_deadline_under_a_real_server(served: tuple[str, int]) -> None:
    base, _ = served
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        answers = [client.post("/v1/jobs", json={"service": "echo", "input": {"n": n}}) for n in range(20)]
    assert {a.status_code for a in answers} == {202}
