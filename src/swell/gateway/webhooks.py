"""Signed webhooks: on a final state, POST the job's outcome to its `callback_url`, with retries.

The receiver checks `X-Swell-Signature` with `verify(body, signature, secret)`:

    sha256=<hex HMAC-SHA256 of the raw body under the webhook secret>

Delivery is at least once: a dispatcher that stops mid-delivery leaves the webhook due, and it is
sent again after a restart. Redirects are never followed, and the URL is checked again right
before each try, since what a name resolves to may have changed since the submit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from typing import Any

import httpx

from swell.core.clock import Clock, SystemClock
from swell.core.errors import Conflict, ValidationError
from swell.core.jobs import Job, RetryPolicy
from swell.gateway.urls import PinnedURL, pin_callback_url
from swell.queue.base import QueueBackend

log = logging.getLogger("swell.webhooks")

IDLE_SECONDS = 0.1


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str, secret: str) -> bool:
    return hmac.compare_digest(sign(body, secret).encode(), signature.encode("utf-8", "replace"))


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
    ) -> None:
        self.queue = queue
        self.clock = clock
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.allow_hosts = allow_hosts
        self.policy = policy
        self.concurrency = concurrency
        self._secret = secret
        self._in_flight: set[str] = set()
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
                    started = self._start_due_logged(tasks)
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
        try:
            updated = await self._attempt(job)
            await asyncio.to_thread(self.queue.save_webhook, updated)
        finally:
            self._in_flight.discard(job.id)
        return updated

    def __repr__(self) -> str:
        return (
            f"WebhookDispatcher(in_flight={len(self._in_flight)}, delivered={self.delivered}, "
            f"failed={self.failed})"
        )

    # -- internals --------------------------------------------------------------------------------

    def _start_due_logged(self, tasks: set[asyncio.Task[None]]) -> int:
        try:
            return self._start_due(tasks)
        except Exception:  # the queue is unreachable for now: keep trying, never stop delivering
            log.exception("reading due webhooks failed")
            return 0

    def _start_due(self, tasks: set[asyncio.Task[None]]) -> int:
        """Start deliveries for due jobs not already in flight; returns how many started.

        The queue is read on the event loop on purpose: a delivery leaves `_in_flight` only on the
        loop, after its outcome is saved, so a read here never sees a job whose delivery just ended
        as still due (a read in a thread could, and would send that webhook twice).
        """
        free = self.concurrency - len(tasks)
        if free <= 0:
            return 0
        due = self.queue.due_webhooks(limit=free + len(self._in_flight))
        fresh = [job for job in due if job.id not in self._in_flight][:free]
        for job in fresh:
            task = asyncio.create_task(self._deliver_logged(job), name=f"webhook-{job.id}")
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return len(fresh)

    async def _deliver_logged(self, job: Job) -> None:
        try:
            await self.deliver(job)
        except Exception:  # the queue refused the outcome; the webhook stays due and is tried again
            log.exception("webhook delivery for job %s could not be recorded", job.id)

    async def _attempt(self, job: Job) -> Job:
        try:
            target = await asyncio.to_thread(pin_callback_url, job.callback_url or "", self.allow_hosts)
        except ValidationError as exc:
            return self._failed(job, f"refused: {exc.message}", permanent=True)
        body = payload(job)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "swell",
            "X-Swell-Job-Id": job.id,
            "X-Swell-Signature": sign(body, self._secret),
        }
        try:
            async with asyncio.timeout(self.timeout):
                status = await self._post(target, body, headers)
        except (TimeoutError, httpx.HTTPError, httpx.InvalidURL) as exc:
            return self._failed(job, f"{type(exc).__name__}: {exc}".rstrip(": "))
        if 200 <= status < 300:
            self.delivered += 1
            return job.webhook_delivered()
        reason = " (redirects are not followed)" if 300 <= status < 400 else ""
        return self._failed(job, f"the receiver answered HTTP {status}{reason}")

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
