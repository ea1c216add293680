"""Signed webhooks: on a final state, POST the job's outcome to its `callback_url`, with retries.

Every delivery carries

    X-Swell-Timestamp: <unix seconds when this try was sent>
    X-Swell-Signature: t=<the same timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<raw body>">

under the webhook secret. The receiver checks it with `verify(body, headers, secret)` (or the
stdlib-only example in docs/webhooks.md): the signature binds the body to the time it was sent, and a
timestamp further than `REPLAY_WINDOW` seconds from the receiver's clock, either way, is refused, so a
captured request cannot be replayed later. Each try is signed anew, so a retry an hour later passes.

Delivery is at least once: a dispatcher that stops mid-delivery leaves the webhook due, and it is
sent again after a restart (receivers deduplicate on `X-Swell-Job-Id` and the state). Redirects are
never followed, and the URL is checked again right before each try, since what a name resolves to may
have changed since the submit.

Exactly one delivery task per due webhook: a job id enters `_in_flight` when its task is created,
before the loop can yield, and leaves it once its outcome is saved. Queue reads and writes run in a
small pool of the dispatcher's own, never on the event loop; a read in a thread can race a delivery
that ends meanwhile (the read may still see the webhook as due), so the ids whose delivery ended while
a read was running are left out of that read's answer, and looked at again by the next read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from swell.core.clock import Clock, SystemClock
from swell.core.errors import Conflict, Unavailable, ValidationError
from swell.core.jobs import Job, RetryPolicy
from swell.gateway.urls import CallbackResolver, PinnedURL
from swell.queue.base import QueueBackend

log = logging.getLogger("swell.webhooks")

IDLE_SECONDS = 0.1
REPLAY_WINDOW = 300.0  # seconds a signed timestamp may differ from the receiver's clock
SIGNATURE_HEADER = "X-Swell-Signature"
TIMESTAMP_HEADER = "X-Swell-Timestamp"
SCHEME = "v1"
QUEUE_THREADS = 4

T = TypeVar("T")


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


class WebhookDispatcher:
    """Delivers due webhooks from `queue`, up to `concurrency` at once, one delivery per job at a time."""

    def __init__(
        self,
        queue: QueueBackend,
        secret: str,
        *,
        clock: Clock = SystemClock(),
        max_attempts: int = 8,
        timeout: float = 10.0,
        allow_hosts: frozenset[str] = frozenset(),
        policy: RetryPolicy = RetryPolicy(),
        concurrency: int = 32,
        resolver: CallbackResolver | None = None,
    ) -> None:
        self.queue = queue
        self.clock = clock
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.allow_hosts = allow_hosts
        self.policy = policy
        self.concurrency = concurrency
        self._own_resolver = resolver is None
        self.resolver = resolver or CallbackResolver(timeout=min(timeout, 5.0))
        self._secret = secret
        self._in_flight: set[str] = set()
        self._reading = False
        self._ended_while_reading: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=QUEUE_THREADS, thread_name_prefix="swell-webhooks")
        self._client: httpx.AsyncClient | None = None
        self.delivered = 0
        self.failed = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver due webhooks until `stop` is set; deliveries cut short are sent again later."""
        tasks: set[asyncio.Task[None]] = set()
        async with self._http() as client:
            self._client = client
            try:
                while not stop.is_set():
                    started = await self._start_due_logged(tasks)
                    if not started:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), IDLE_SECONDS)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._client = None

    async def deliver(self, job: Job) -> Job:
        """Try one delivery of `job`'s webhook, record the outcome in the queue, return the job."""
        if job.id in self._in_flight:
            raise Conflict(f"a webhook delivery for job {job.id} is already in flight", field="id")
        self._in_flight.add(job.id)
        return await self._deliver_marked(job)

    def close(self) -> None:
        """Release the dispatcher's threads (its DNS pool too, when it made that itself)."""
        self._pool.shutdown(wait=False)
        if self._own_resolver:
            self.resolver.close()

    def __repr__(self) -> str:
        return (
            f"WebhookDispatcher(in_flight={len(self._in_flight)}, delivered={self.delivered}, "
            f"failed={self.failed})"
        )

    # -- internals --------------------------------------------------------------------------------

    async def _start_due_logged(self, tasks: set[asyncio.Task[None]]) -> int:
        try:
            return await self._start_due(tasks)
        except Exception:  # the queue is unreachable for now: keep trying, never stop delivering
            log.exception("reading due webhooks failed")
            return 0

    async def _start_due(self, tasks: set[asyncio.Task[None]]) -> int:
        """Start deliveries for due jobs not already in flight; returns how many started.

        Each id is marked in flight here, before the next await, so no later read can start it again.
        """
        free = self.concurrency - len(tasks)
        if free <= 0:
            return 0
        due = await self._read_due(free + len(self._in_flight))
        fresh = [job for job in due if job.id not in self._in_flight][:free]
        for job in fresh:
            self._in_flight.add(job.id)
            task = asyncio.create_task(self._deliver_logged(job), name=f"webhook-{job.id}")
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return len(fresh)

    async def _read_due(self, limit: int) -> list[Job]:
        """Due jobs, read in a thread, less those whose delivery ended during the read (stale)."""
        self._reading, self._ended_while_reading = True, set()
        try:
            due = await self._in_thread(self.queue.due_webhooks, limit)
        finally:
            self._reading = False
        return [job for job in due if job.id not in self._ended_while_reading]

    async def _deliver_logged(self, job: Job) -> None:
        try:
            await self._deliver_marked(job)
        except Exception:  # the queue refused the outcome; the webhook stays due and is tried again
            log.exception("webhook delivery for job %s could not be recorded", job.id)

    async def _deliver_marked(self, job: Job) -> Job:
        """Deliver a job already marked in flight; unmark it once the outcome is saved (or not)."""
        try:
            updated = await self._attempt(job)
            await self._in_thread(self.queue.save_webhook, updated)
        finally:
            self._in_flight.discard(job.id)
            if self._reading:
                self._ended_while_reading.add(job.id)
        return updated

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _attempt(self, job: Job) -> Job:
        try:
            target = await self.resolver.pin(job.callback_url or "", self.allow_hosts)
        except ValidationError as exc:
            return self._failed(job, f"refused: {exc.message}", permanent=True)
        except Unavailable as exc:  # the resolver is swamped: a transient failure, tried again later
            return self._failed(job, exc.message)
        body = payload(job)
        try:
            async with asyncio.timeout(self.timeout):
                status = await self._post(target, body, self._headers(job, body))
        except (TimeoutError, httpx.HTTPError, httpx.InvalidURL) as exc:
            return self._failed(job, f"{type(exc).__name__}: {exc}".rstrip(": "))
        if 200 <= status < 300:
            self.delivered += 1
            return job.webhook_delivered()
        reason = " (redirects are not followed)" if 300 <= status < 400 else ""
        return self._failed(job, f"the receiver answered HTTP {status}{reason}")

    def _headers(self, job: Job, body: bytes) -> dict[str, str]:
        timestamp = int(self.clock.now())
        return {
            "Content-Type": "application/json",
            "User-Agent": "swell",
            "X-Swell-Job-Id": job.id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(body, self._secret, timestamp),
        }

    async def _post(self, target: PinnedURL, body: bytes, headers: dict[str, str]) -> int:
        """POST and return the status; the receiver's response body is never read."""
        if self._client is not None:
            return await self._send(self._client, target, body, headers)
        async with self._http() as client:
            return await self._send(client, target, body, headers)

    @staticmethod
    async def _send(
        client: httpx.AsyncClient, target: PinnedURL, body: bytes, headers: dict[str, str]
    ) -> int:
        extensions = {}
        if target.host is not None and target.server_name is not None:  # the checked address, by name
            headers = {**headers, "Host": target.host}
            extensions["sni_hostname"] = target.server_name
        stream = client.stream("POST", target.url, content=body, headers=headers, extensions=extensions)
        async with stream as response:
            return response.status_code

    def _failed(self, job: Job, error: str, *, permanent: bool = False) -> Job:
        updated = job.webhook_failed(
            error,
            self.clock.now(),
            max_attempts=1 if permanent else self.max_attempts,
            policy=self.policy,
        )
        if updated.webhook_next_at is None:
            self.failed += 1
            log.warning("gave up on the webhook of job %s: %s", job.id, error)
        return updated

    def _http(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        return httpx.AsyncClient(timeout=self.timeout, follow_redirects=False, limits=limits, trust_env=False)
