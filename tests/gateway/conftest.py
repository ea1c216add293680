"""Fixtures: the gateway over a real SQLite file, reached through the in-process ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from swell.core.config import Settings, parse_config
from swell.gateway.app import create_app
from swell.gateway.limits import GatewayLimits
from swell.queue.base import QueueBackend, open_queue
from tests.gateway.helpers import API_KEY, SERVICES, FakeReplicas, Gateway, MakeGateway


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# A busy CI machine's event-loop lag must not shed the requests these tests make: shedding has its
# own tests (test_shedding, test_limits), which pass their own limits.
QUIET = GatewayLimits(max_loop_lag_seconds=60.0)


@pytest.fixture(params=["sqlite", "memory"])
def make_gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeGateway]:
    """Builds apps over a real SQLite file (and, as a second run, the in-memory backend)."""
    queues: list[QueueBackend] = []

    def open_backend() -> QueueBackend:
        if request.param == "memory":
            return open_queue("memory://")
        return open_queue(f"sqlite:///{tmp_path}/swell-{len(queues)}.db")

    def make(
        *,
        raw: dict[str, Any] | None = None,
        extra_services: Any = None,
        registry: Any = None,
        limits: Any = None,
        **settings: Any,
    ) -> Gateway:
        config = parse_config(raw or SERVICES)
        resolved = Settings(**{"data_dir": tmp_path, "api_key": API_KEY, **settings})
        queue = open_backend()
        queues.append(queue)
        replicas = FakeReplicas()
        app = create_app(
            config,
            resolved,
            queue,
            replicas=replicas,
            extra_services=extra_services,
            registry=registry,
            limits=limits if limits is not None else QUIET,
        )
        return Gateway(app, queue, resolved, config, replicas)

    yield make
    for queue in queues:
        queue.close()


@pytest.fixture
def gateway(make_gateway: MakeGateway) -> Gateway:
    return make_gateway()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client() as http:
        yield http
