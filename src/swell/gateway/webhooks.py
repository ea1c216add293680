"""Signed webhooks: the outbox channel that POSTs a final job's outcome to its `callback_url`.

Every delivery carries

    X-Swell-Timestamp: <unix seconds when this try was sent>
    X-Swell-Signature: t=<the same timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<raw body>">

under the webhook secret. The receiver checks it with `verify(body, headers, secret)` (or the
stdlib-only example in docs/webhooks.md): the signature binds the body to the time it was sent, and a
timestamp further than `REPLAY_WINDOW` seconds from the receiver's clock, either way, is refused, so a
captured request cannot be replayed later. Each try is signed anew, so a retry an hour later passes.

`WebhookChannel` is one `swell.gateway.outbox.Channel`: the outbox's `Dispatcher` decides when to
try (at least once, one try per row at a time, back-off, giving up); the channel makes one try. The
target is the row's `{"url": ...}`. Redirects are never followed (a 3xx is a failed try), the URL is
checked again right before each try (what a name resolves to may have changed since the submit) and
the request goes to the address that was checked, and a 429 with `Retry-After` (seconds) is a
rate-limited try, due again then and not counted. The response body is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from swell.core.clock import Clock, SystemClock
from swell.core.errors import Unavailable, ValidationError
from swell.core.jobs import WEBHOOK, Delivery, Job
from swell.gateway.outbox import DeliveryFailed
from swell.gateway.urls import CallbackResolver, PinnedURL

REPLAY_WINDOW = 300.0  # seconds a signed timestamp may differ from the receiver's clock
SIGNATURE_HEADER = "X-Swell-Signature"
TIMESTAMP_HEADER = "X-Swell-Timestamp"
SCHEME = "v1"
MAX_RETRY_AFTER = 3600.0  # the longest `Retry-After` a receiver is obeyed for (seconds)


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The `X-Swell-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},{SCHEME}={_digest(body, secret, timestamp)}"


def verify(
    body: bytes,
    signature: str | Mapping[str, str],
    secret: str,
    *,
    timestamp: str | int | None = None,
    tolerance: float = REPLAY_WINDOW,
    now: float | None = None,
) -> bool:
    """Whether `body` was signed with `secret` at a time within `tolerance` seconds of `now`.

    `signature` is the `X-Swell-Signature` value or the request's headers (any case); a
    `timestamp` (the `X-Swell-Timestamp` value, read from the headers when given those) must agree
    with the signed one. Any `v1=` entry may match (several appear while a secret is rotated).
    Comparisons are constant-time.
    """
    if isinstance(signature, Mapping):
        headers = {k.lower(): v for k, v in signature.items()}
        signature = headers.get(SIGNATURE_HEADER.lower(), "")
        timestamp = headers.get(TIMESTAMP_HEADER.lower(), timestamp)
    signed_at, digests = parse_signature(signature)
    if signed_at is None or not digests:
        return False
    if timestamp is not None and str(timestamp).strip() != str(signed_at):
        return False
    if abs((time.time() if now is None else now) - signed_at) > tolerance:
        return False
    expected = _digest(body, secret, signed_at).encode()
    return any(hmac.compare_digest(expected, d.encode("utf-8", "replace")) for d in digests)


def parse_signature(value: str) -> tuple[int | None, list[str]]:
    """`t=<ts>,v1=<hex>[,v1=<hex>...]` -> (ts, [hex...]); (None, []) when there is no valid `t`."""
    signed_at: int | None = None
    digests: list[str] = []
    for item in value.split(","):
        key, _, val = item.strip().partition("=")
        if key == "t" and val.isascii() and val.isdigit() and len(val) <= 12:
            signed_at = int(val)
        elif key == SCHEME:
            digests.append(val)
    return signed_at, digests


def _digest(body: bytes, secret: str, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def payload(job: Job) -> bytes:
    """The body a receiver gets: `{"id", "state", "result"?, "error"?}`."""
    body: dict[str, Any] = {"id": job.id, "state": job.state.value}
    if job.result is not None:
        body["result"] = job.result
    if job.error is not None:
        body["error"] = job.error
    return json.dumps(body, separators=(",", ":")).encode()


class WebhookChannel:
    """POSTs a final job's outcome, signed, to the row's URL: one try per `deliver` call.

    Inside `session()` (the dispatcher holds it open while it runs) tries share one connection pool
    of up to `concurrency` connections; outside it each try opens its own client."""

    name = WEBHOOK
    wants_progress = False

    def __init__(
        self,
        secret: str,
        *,
        clock: Clock = SystemClock(),
        timeout: float = 10.0,
        allow_hosts: frozenset[str] = frozenset(),
        concurrency: int = 32,
        resolver: CallbackResolver | None = None,
    ) -> None:
        self.clock = clock
        self.timeout = timeout
        self.allow_hosts = allow_hosts
        self.concurrency = concurrency
        self._own_resolver = resolver is None
        self.resolver = resolver or CallbackResolver(timeout=min(timeout, 5.0))
        self._secret = secret
        self._client: httpx.AsyncClient | None = None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        async with self._http() as client:
            self._client = client
            try:
                yield
            finally:
                self._client = None

    async def deliver(self, delivery: Delivery, job: Job) -> None:
        """One signed POST; `DeliveryFailed` unless the receiver answered 2xx."""
        target = await self._pin(str(delivery.target.get("url", "")))
        body = payload(job)
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._post(target, body, self._headers(job, body))
        except (TimeoutError, httpx.HTTPError, httpx.InvalidURL) as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        reason = " (redirects are not followed)" if 300 <= status < 400 else ""
        wait = _retry_after(response.headers.get("Retry-After")) if status == 429 else None
        raise DeliveryFailed(f"the receiver answered HTTP {status}{reason}", retry_after=wait)

    async def progress(self, delivery: Delivery, job: Job) -> None:
        """Webhooks carry only the outcome."""

    async def expire(self, delivery: Delivery, job: Job) -> None:
        """A webhook's URL does not expire."""

    def close(self) -> None:
        """Release the DNS pool, when the channel made it itself."""
        if self._own_resolver:
            self.resolver.close()

    def __repr__(self) -> str:
        return f"WebhookChannel(timeout={self.timeout}, allow_hosts={sorted(self.allow_hosts)})"

    # -- internals --------------------------------------------------------------------------------

    async def _pin(self, url: str) -> PinnedURL:
        """The URL checked (again) and pinned to the address it resolves to now."""
        try:
            return await self.resolver.pin(url, self.allow_hosts)
        except ValidationError as exc:
            raise DeliveryFailed(f"refused: {exc.message}", permanent=True) from None
        except Unavailable as exc:  # the resolver is swamped: a transient failure, tried again later
            raise DeliveryFailed(exc.message) from None

    def _headers(self, job: Job, body: bytes) -> dict[str, str]:
        timestamp = int(self.clock.now())
        return {
            "Content-Type": "application/json",
            "User-Agent": "swell",
            "X-Swell-Job-Id": job.id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(body, self._secret, timestamp),
        }

    async def _post(self, target: PinnedURL, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST and return the response, its body unread."""
        if self._client is not None:
            return await self._send(self._client, target, body, headers)
        async with self._http() as client:
            return await self._send(client, target, body, headers)

    @staticmethod
    async def _send(
        client: httpx.AsyncClient, target: PinnedURL, body: bytes, headers: dict[str, str]
    ) -> httpx.Response:
        extensions = {}
        if target.host is not None and target.server_name is not None:  # the checked address, by name
            headers = {**headers, "Host": target.host}
            extensions["sni_hostname"] = target.server_name
        stream = client.stream("POST", target.url, content=body, headers=headers, extensions=extensions)
        async with stream as response:
            return response

    def _http(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        return httpx.AsyncClient(timeout=self.timeout, follow_redirects=False, limits=limits, trust_env=False)


def _retry_after(value: str | None) -> float | None:
    """A `Retry-After` in seconds (an HTTP date is not honoured: the try backs off as usual)."""
    try:
        seconds = float(value or "")
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, MAX_RETRY_AFTER)


__all__ = ["REPLAY_WINDOW", "WebhookChannel", "parse_signature", "payload", "sign", "verify"]
