"""The load-shedding controller, on its own: the share of `/v1` requests refused follows the loop's
lag samples, and the middleware refuses that share (no server needed)."""

from __future__ import annotations

import asyncio
from typing import Any

from swell.gateway.limits import GatewayLimits, LagMonitor, Shedding


def test_the_shed_share_follows_the_loop_lag() -> None:
    monitor = LagMonitor(target=0.1)
    for _ in range(6):
        monitor.record(0.4)
    assert 0.9 < monitor.shed_fraction <= LagMonitor.MAX_SHED
    high = monitor.shed_fraction
    monitor.record(0.07)  # between half the target and the target: hold
    assert monitor.shed_fraction == high
    monitor.record(0.0)
    assert monitor.shed_fraction < high
    for _ in range(40):
        monitor.record(0.0)
    assert monitor.shed_fraction == 0.0


def test_shedding_refuses_the_share_it_is_asked_to_and_never_probes() -> None:
    monitor = LagMonitor(target=0.1)
    monitor.shed_fraction = 0.75
    served: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        served.append(scope["path"])

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    shedding = Shedding(app, monitor, GatewayLimits())

    async def requests() -> None:
        for path in ["/v1/jobs"] * 40 + ["/healthz"] * 5:
            await shedding({"type": "http", "path": path}, None, send)

    asyncio.run(requests())
    assert served.count("/v1/jobs") == 10 and served.count("/healthz") == 5
    assert statuses == [503] * 30
