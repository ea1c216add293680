"""uvicorn's h11 protocol with the limits it lacks: a connection cap, an idle deadline for
connections that never send a request, a read deadline against slow clients, and every refusal
in the JSON error shape.

uvicorn closes a keep-alive connection that idles between requests and caps the header size (h11's
`max_incomplete_event_size`), but a connection that sends nothing, or sends its headers a byte at
a time (slowloris), holds a socket for ever; its concurrency limit counts idle sockets and answers
in plain text. `GuardedH11Protocol`:

- answers the connection over `max_connections` with a 503 (JSON, `Retry-After`) and closes it;
- closes a connection that has not started a request within `keep_alive_seconds`;
- answers 408 and closes a connection whose request (headers and body) has not fully arrived
  `read_timeout_seconds` after its first byte;
- answers a request line and headers over `max_header_bytes` with 431, counted as the bytes
  arrive (h11's own cap only bounds a head still incomplete, so one large read got through), and a
  malformed request with 400, both in the JSON error shape.

The deadlines are plain loop timers: no task per connection.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from swell.gateway.limits import GatewayLimits, retry_after

READING = (h11.IDLE, h11.SEND_BODY)  # the client's side while a request is still arriving


def serving_config(app: Any, host: str, port: int, limits: GatewayLimits, **options: Any) -> uvicorn.Config:
    """uvicorn's settings for the gateway: the guarded protocol, the header cap and the idle timeout.

    uvicorn's own `limit_concurrency` stays off: it counts idle sockets and answers in plain text;
    the protocol's connection cap and the app's shedding replace it."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(limits),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=max(1, round(limits.keep_alive_seconds)),
        **{"log_level": "warning", "access_log": False, **options},
    )


def guarded_protocol(limits: GatewayLimits) -> type[GuardedH11Protocol]:
    """A protocol class bound to `limits`, for `uvicorn.Config(http=...)`."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


class GuardedH11Protocol(H11Protocol):
    limits: ClassVar[GatewayLimits] = GatewayLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        if len(self.connections) > self.limits.max_connections:
            message = "too many connections; retry shortly"
            self._refuse(503, "Unavailable", message, retry=self.limits.retry_after_seconds)
            return
        self.timeout_keep_alive_task = self.loop.call_later(
            self.limits.keep_alive_seconds, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_too_large(data):
            limit = self.limits.max_header_bytes
            self._refuse(431, "HeadersTooLarge", f"the request line and headers are over {limit} bytes")
            return
        super().data_received(data)
        if self.transport.is_closing():
            self._cancel_read_deadline()
        elif self.conn.their_state in READING:
            self._arm_read_deadline()
        else:
            self._cancel_read_deadline()

    def _head_too_large(self, data: bytes) -> bool:
        """Counts the bytes of a request head as they arrive (h11's own cap lets a head that
        arrives in one read through, whatever its size)."""
        end = data.find(b"\r\n\r\n")
        size = self._head_bytes + (len(data) if end < 0 else end + 4)
        self._head_bytes = size if end < 0 else 0
        return size > self.limits.max_header_bytes

    def send_400_response(self, msg: str) -> None:
        message = f"malformed HTTP request, or its headers are over {self.limits.max_header_bytes} bytes"
        self._refuse(400, "BadRequest", message)

    # -- deadlines --------------------------------------------------------------------------------

    def _arm_read_deadline(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self.limits.read_timeout_seconds, self._read_timed_out)

    def _cancel_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing() or self.conn.their_state not in READING:
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        seconds = self.limits.read_timeout_seconds
        self._refuse(408, "RequestTimeout", f"the request did not arrive within {seconds:g} s")

    def _refuse(self, status: int, error: str, message: str, *, retry: float | None = None) -> None:
        """Write a complete JSON answer straight to the socket and close it (h11 may be mid-request)."""
        if self.cycle is not None:
            self.cycle.disconnected = True  # the app, if it runs, must not write after this answer
        self.transport.write(_raw_response(status, error, message, retry))
        self.transport.close()


def _raw_response(status: int, error: str, message: str, retry: float | None) -> bytes:
    body = json.dumps({"error": error, "message": message}).encode()
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry is not None:
        head.append(f"retry-after: {retry_after(retry)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


__all__ = ["GuardedH11Protocol", "guarded_protocol", "serving_config"]
