"""The limits a production gateway keeps, and the ASGI middleware that enforces the ones the app sees.

`GatewayLimits` is the one place the knobs live (read from `gateway:` in swell.yaml, with the
defaults below for keys the config does not have): the protocol (`swell.gateway.protocol`) enforces
the header size, the connection cap and the read and idle deadlines; `BodyLimit` the body size;
`Shedding` answers 503 with `Retry-After` at once while the event loop lags behind, rather than
letting every client time out; the storage facade and the group commit refuse work beyond their
own backlogs the same way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
from dataclasses import dataclass, fields
from typing import Any

from swell.core.errors import PayloadTooLarge, SwellError, Unavailable

log = logging.getLogger("swell.gateway")

Scope = dict[str, Any]
Message = dict[str, Any]

OPEN_PATHS = ("/healthz", "/readyz", "/metrics")  # answered even while shedding: probes must see the truth


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """Every limit of the serving path, with production defaults."""

    max_header_bytes: int = 16_384  # request line and headers; more is a 431 and the connection closes
    max_connections: int = 1024  # open sockets; the next one is answered 503 and closed
    keep_alive_seconds: float = 5.0  # an idle connection (none sent yet, or between requests) closes
    read_timeout_seconds: float = 30.0  # a request's headers and body must arrive within this
    max_pending_submits: int = 4096  # submits waiting for the group commit before new ones get 503
    max_storage_backlog: int = 512  # storage calls queued or running before new ones get 503
    max_loop_lag_seconds: float = 0.5  # event-loop lag over which /v1 requests get 503
    storage_threads: int = 8  # the storage facade's own thread pool
    dns_threads: int = 4  # the callback check's own pool, so a slow resolver delays nothing else
    dns_timeout_seconds: float = 5.0  # a callback host that does not resolve in time is a 422
    retry_after_seconds: float = 1.0  # what a shed request is told to wait

    @classmethod
    def of(cls, gateway: object) -> GatewayLimits:
        """The limits `gateway` (a `GatewayConfig`) sets; defaults for the keys it does not have."""
        defaults = cls()
        values = {f.name: getattr(gateway, f.name, getattr(defaults, f.name)) for f in fields(cls)}
        return cls(**values)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


async def send_error(send: Any, error: SwellError) -> None:
    """Answer `error` in the JSON error shape from pure ASGI code."""
    extra = {"retry-after": retry_after(error.retry_after)} if isinstance(error, Unavailable) else {}
    await send_json(send, error.status_code, error.to_dict(), extra)


async def send_json(send: Any, status: int, content: dict[str, Any], extra: dict[str, str]) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Answers 413 once a request declares or sends more than `max_bytes` of body, so neither a
    large Content-Length nor a chunked body that never declares its length gets past it."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.max_bytes:
            await send_error(send, self._error())
            return
        state = {"received": 0, "exceeded": False, "started": False}

        async def counting_receive() -> Message:
            message: Message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["exceeded"] = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if state["exceeded"]:
                return  # whatever the app makes of the interrupted body, the answer is 413
            state["started"] = True
            await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if state["exceeded"] and not state["started"]:
            await send_error(send, self._error())

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is over {self.max_bytes} bytes", field="body")


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0  # the server refuses a malformed length before it reaches us
    return 0


class LagMonitor:
    """How late the event loop runs a timer, and what share of `/v1` requests to refuse because of it.

    `run()` wakes every `interval` seconds and records how much later than asked it woke. `lag` is the
    largest of the last `window` delays (0 until the monitor runs). `shed_fraction` is a controller
    over the same samples: each sample over `target` moves it half-way to `MAX_SHED`, each sample under
    half the target shrinks it by a fifth, and between the two it holds. Refusing a share rather than
    everything keeps the gateway's goodput near its capacity: refusals cost the loop too, and a door
    that shuts completely while the loop is late stays shut while it answers the refusals.
    """

    MAX_SHED = 0.98  # a trickle of admissions always gets through, so recovery is seen

    def __init__(self, interval: float = 0.05, window: int = 10, target: float = 0.5) -> None:
        self.interval = interval
        self.target = target
        self.shed_fraction = 0.0
        self._samples: collections.deque[float] = collections.deque(maxlen=window)

    @property
    def lag(self) -> float:
        return max(self._samples, default=0.0)

    def record(self, delay: float) -> None:
        """One sample: the loop woke `delay` seconds later than asked."""
        self._samples.append(delay)
        if delay > self.target:
            self.shed_fraction += (self.MAX_SHED - self.shed_fraction) / 2
        elif delay < self.target / 2:
            self.shed_fraction = 0.0 if self.shed_fraction < 0.01 else self.shed_fraction * 0.8

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval)
            self.record(max(0.0, loop.time() - started - self.interval))


class Shedding:
    """Answers a share of `/v1` requests 503 with `Retry-After` at once while the event loop is late
    (the monitor's `shed_fraction`): a quick refusal the client can act on, where waiting in line
    would end in its own timeout. Which requests go is decided by error diffusion, not by chance, so
    the share holds over any few requests. Probes and metrics are always answered."""

    def __init__(self, app: Any, monitor: LagMonitor, limits: GatewayLimits, on_shed: Any = None) -> None:
        self.app = app
        self.monitor = monitor
        self.limits = limits
        self.on_shed = on_shed
        self._credit = 0.0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._admit():
            await self.app(scope, receive, send)
            return
        if self.on_shed is not None:
            self.on_shed("loop_lag")
        message = f"the gateway is overloaded (event loop {self.monitor.lag:.2f}s behind); retry shortly"
        await send_error(send, Unavailable(message, retry_after=self.limits.retry_after_seconds))

    def _admit(self) -> bool:
        shed = self.monitor.shed_fraction
        if shed <= 0.0:
            self._credit = 0.0
            return True
        self._credit += 1.0 - shed
        if self._credit >= 1.0:
            self._credit -= 1.0
            return True
        return False


class InternalErrors:
    """The outermost guard: an exception nothing else handled becomes a 500 in the JSON error shape
    (the traceback goes to the log, never to the client)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise  # half an answer is out: the server closes the connection
            await send_json(send, 500, INTERNAL_ERROR, {})


INTERNAL_ERROR = {"error": "InternalError", "message": "the server failed; the details are in its log"}


__all__ = ["BodyLimit", "GatewayLimits", "InternalErrors", "LagMonitor", "Shedding"]
