"""What `/healthz`, `/readyz` and the submit path know about the storage and the services.

`/healthz` is liveness: the process answers. It never waits on storage: it reads the result of the
latest background write probe (`StorageHealth`), started when the previous one is over `every`
seconds old, and answers 503 when that probe failed or has been stuck longer than `timeout`.
`/readyz` is readiness: storage writable and every service that should have replicas has a ready
one. `ServiceHealth` keeps the replica list at most `every` seconds old, read off the loop, so a
submit can ask whether its service is crash-looping (`unavailable_reason`) without a call per
submit into the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from swell.core.config import ServiceConfig
from swell.core.errors import SwellError
from swell.core.replicas import ReplicaInfo, ReplicaState, ReplicaView, unavailable_reason
from swell.gateway.storage import AsyncQueue

Probe = Callable[[], Awaitable[None]]

LIVE = (ReplicaState.READY, ReplicaState.BUSY)


class StorageHealth:
    """The outcome of the latest storage write probe, refreshed in the background."""

    def __init__(
        self,
        probe: Probe,
        *,
        every: float = 1.0,
        timeout: float = 5.0,
        first_wait: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe = probe
        self.every = every
        self.timeout = timeout
        self.first_wait = first_wait
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0
        self._finished: float | None = None
        self._problem: str | None = None

    async def problem(self) -> str | None:
        """Why the storage cannot take writes now, or None when the latest probe passed."""
        now = self.clock()
        if self._task is None and (self._finished is None or now - self._finished >= self.every):
            self._started = now
            self._task = asyncio.create_task(self._run(), name="storage-probe")
        if self._finished is None and self._task is not None:  # nothing known yet: wait a little
            await asyncio.wait({self._task}, timeout=self.first_wait)
        if self._task is not None and self.clock() - self._started > self.timeout:
            return f"storage has not taken a write for {self.clock() - self._started:.0f} s"
        if self._finished is None:
            return f"storage has not taken a write within {self.first_wait:g} s"
        return self._problem

    async def _run(self) -> None:
        try:
            await self.probe()
        except SwellError as exc:
            self._problem = exc.message or type(exc).__name__
        except Exception as exc:  # a probe that fails in a way nobody translated still means failing
            self._problem = f"{type(exc).__name__}: {exc}"
        else:
            self._problem = None
        finally:
            self._finished = self.clock()
            self._task = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ServiceHealth:
    """The supervisor's replica list, read in the storage pool and kept at most `every` seconds."""

    def __init__(self, replicas: ReplicaView | None, storage: AsyncQueue, *, every: float = 1.0) -> None:
        self.view = replicas
        self.storage = storage
        self.every = every
        self._items: list[ReplicaInfo] = []
        self._read_at: float | None = None
        self._refresh: asyncio.Task[None] | None = None

    async def replicas(self, *, fresh: bool = False) -> list[ReplicaInfo]:
        if self.view is None:
            return []
        if fresh or self._read_at is None or time.monotonic() - self._read_at >= self.every:
            if self._refresh is None:
                self._refresh = asyncio.create_task(self._read(self.view), name="replica-read")
            await asyncio.shield(self._refresh)
        return self._items

    async def _read(self, view: ReplicaView) -> None:
        try:
            self._items = await self.storage.run(view.replicas)
            self._read_at = time.monotonic()
        finally:
            self._refresh = None

    async def failing(self, service: str) -> str | None:
        """Why `service` refuses submits (its replicas keep crashing), or None."""
        return unavailable_reason(await self.replicas(), service)

    async def not_ready(self, services: list[ServiceConfig]) -> list[str]:
        """A reason for each service that should have replicas and has none ready."""
        if self.view is None:
            return []
        replicas = await self.replicas(fresh=True)
        return [
            f"service {s.name!r} has no ready replica" + _last_error(replicas, s.name)
            for s in services
            if s.replicas.min > 0 and not any(r.service == s.name and r.state in LIVE for r in replicas)
        ]


def _last_error(replicas: list[ReplicaInfo], service: str) -> str:
    error = next((r.last_error for r in replicas if r.service == service and r.last_error), None)
    return f" (last error: {error})" if error else ""


__all__ = ["ServiceHealth", "StorageHealth"]
