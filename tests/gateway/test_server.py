"""The gateway under a real uvicorn on a loopback port: lifespan, chunked bodies, waiting submits."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from tests.gateway.helpers import AUTH, Gateway, MakeGateway, complete_in_thread
from tests.support import free_port, wait_for


@pytest.fixture
def served(make_gateway: MakeGateway) -> Iterator[tuple[Gateway, str]]:
    gateway = make_gateway()
    port = free_port()
    config = uvicorn.Config(gateway.app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200, 20, "uvicorn")
    yield gateway, base
    server.should_exit = True
    thread.join(timeout=10)


def test_a_chunked_body_over_the_limit_gets_413(served: tuple[Gateway, str]) -> None:
    _, base = served

    def chunks() -> Iterator[bytes]:
        yield b'{"service": "echo", "input": {"text": "'
        for _ in range(20):
            yield b"x" * 1000
        yield b'"}}'

    headers = {**AUTH, "Content-Type": "application/json"}
    response = httpx.post(f"{base}/v1/jobs", content=chunks(), headers=headers, timeout=10)
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413 and response.json()["field"] == "body"


def test_wait_and_the_background_metrics_reader(served: tuple[Gateway, str]) -> None:
    gateway, base = served
    worker = complete_in_thread(gateway.queue, "echo", {"n": 2}, after=0.1)
    body = {"service": "echo", "input": {"n": 1}, "wait": 5}
    response = httpx.post(f"{base}/v1/jobs", json=body, headers=AUTH, timeout=10)
    worker.join()
    assert response.status_code == 200 and response.json()["result"] == {"n": 2}
    registry = gateway.app.state.registry
    wait_for(
        lambda: registry.get_sample_value("swell_job_latency_seconds_count", {"service": "echo"}) == 1,
        10,
        "the lifespan task to read the finished job",
    )
