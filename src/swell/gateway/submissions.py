"""The submission service: how every front door (the `/v1` jobs API, OpenAI, A1111, Discord) puts
a job on the queue, waits for it and follows its events.

`Submissions` knows nothing of HTTP. It owns what a submit must get right the same way at every
door: the service lookup (404), the refusal of a service whose replicas keep crashing (503), input
validation through the engine's spec (422 naming the field), the callback URL check, the request
filter (403 `Refused`, swell.gateway.filtering), admission (the service's queue limit, 429),
idempotency (a repeat of the key returns the same job; a different request under it is a 409),
group commit (submits that arrive together share a transaction) and the arrival and rejection
counters. A door translates its own request into `submit(...)` and the
`SwellError`s it raises into its own error shape.

`wait` and `watch` read the queue through `AsyncQueue` only, never on the event loop: `wait` polls a
job until it is final (5 ms apart, growing to 100 ms), `watch` yields its event log until the final
state event (50 ms apart while quiet, growing to 500 ms while the job waits in the queue, held at
50 ms once a worker runs it: the next event is then a token a streaming client is waiting for).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from swell.core.config import ServiceConfig, Settings, SwellConfig
from swell.core.errors import (
    Conflict,
    QueueFull,
    Refused,
    ServiceNotFound,
    SwellError,
    Unavailable,
    ValidationError,
)
from swell.core.jobs import WEBHOOK, DeliverySpec, EventKind, Job, JobEvent, JobSpec, JobState, Priority
from swell.gateway.batching import GroupCommit
from swell.gateway.events import is_final
from swell.gateway.filtering import RequestFilter
from swell.gateway.health import ServiceHealth
from swell.gateway.limits import GatewayLimits
from swell.gateway.metrics import GatewayMetrics
from swell.gateway.storage import AsyncQueue
from swell.gateway.urls import CallbackResolver

log = logging.getLogger("swell.gateway")

Validator = Callable[[str, dict[str, Any], dict[str, Any]], None]
Disconnected = Callable[[], Awaitable[bool]]

FIRST_POLL = 0.005  # seconds between looks at a job `wait` follows, growing to LAST_POLL
LAST_POLL = 0.1
FIRST_WATCH = 0.05  # seconds between reads of a quiet job's events, growing to LAST_WATCH
LAST_WATCH = 0.5
RUNNING_WATCH = 0.05  # the most between reads while the job runs: its next event is text a client awaits
PAGE = 500  # events read per look
FAILING_RETRY_AFTER = 10.0  # what a submit to a crash-looping service is told to wait


class Submissions:
    """Submit, wait for and watch jobs, for any door (see the module docstring)."""

    def __init__(
        self,
        config: SwellConfig,
        settings: Settings,
        storage: AsyncQueue,
        metrics: GatewayMetrics,
        limits: GatewayLimits,
        health: ServiceHealth,
        *,
        validate_input: Validator | None,
    ) -> None:
        self.services = {service.name: service for service in config.services}
        self.max_wait = config.gateway.max_wait_seconds
        self.storage = storage
        self.metrics = metrics
        self.health = health
        self.validate_input = validate_input
        self.allow_hosts = settings.callback_allow_hosts
        self.commits = GroupCommit(
            storage, max_pending=limits.max_pending_submits, retry_after=limits.retry_after_seconds
        )
        self.callbacks = CallbackResolver(threads=limits.dns_threads, timeout=limits.dns_timeout_seconds)
        self.filter = RequestFilter.of(config.gateway.filter)
        self._abandoned: set[asyncio.Task[None]] = set()  # cancels of jobs whose client left

    # -- submit -----------------------------------------------------------------------------------

    def service(self, name: str) -> ServiceConfig:
        """The service called `name`; `ServiceNotFound` (404, counted) when there is none."""
        service = self.services.get(name)
        if service is None:
            self.metrics.rejections.labels("", "unknown_service").inc()
            raise ServiceNotFound(f"no service named {name!r}", field="service")
        return service

    async def submit(
        self,
        service_name: str,
        input: dict[str, Any],
        *,
        model: str | None = None,
        priority: Priority = Priority.NORMAL,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        tenant: str | None = None,
        wait: float = 0.0,
        door: str = "jobs",
        deliveries: Sequence[DeliverySpec] = (),
    ) -> tuple[Job, bool]:
        """Store a job for `service_name` once it is durable: the job and whether this call created
        it (False: an idempotent repeat). `wait` is only checked against the gateway's
        `max_wait_seconds` here (the door waits with `wait()`). Raises the `SwellError` that
        refused it: ServiceNotFound, Unavailable, ValidationError, QueueFull, Conflict, and
        `Refused` (swell.gateway.filtering; counted per `door`, the API it came through).
        `deliveries` go to the job's outbox beside the webhook of `callback_url` (a door's own
        follow-ups: a Discord channel's), one per channel."""
        service = self.service(service_name)
        model = await self._check(service, input, callback_url, wait, model)
        if deliveries:
            await self._check_deliveries(service, callback_url, deliveries)
        await self._screen(service, input, door)
        spec = JobSpec(
            service=service.name,
            input=input,
            priority=priority,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            tenant=tenant,
            model=model,
            max_attempts=service.max_attempts,
            timeout=service.job_timeout,
            deliveries=tuple(deliveries),
        )
        job, created = await self._store(spec, service)
        if created:
            self.metrics.arrivals.labels(service.name).inc()
        return job, created

    async def _check(
        self,
        service: ServiceConfig,
        payload: dict[str, Any],
        callback_url: str | None,
        wait: float,
        model: str | None = None,
    ) -> str | None:
        """Everything a submit is refused for before it reaches the queue (422, or 503 for a
        service whose replicas keep crashing); returns the job's model (the service's
        `default_model` when it names none)."""
        reason = await self.health.failing(service.name)
        if reason is not None:
            self.metrics.rejections.labels(service.name, "failing").inc()
            raise Unavailable(reason, retry_after=FAILING_RETRY_AFTER, field="service")
        try:
            if wait > self.max_wait:
                raise ValidationError(f"wait is at most {self.max_wait:g} seconds", field="wait")
            model = job_model(service, model)
            self._validate_input(service, payload, model)
            if callback_url is not None:
                await self.callbacks.check(callback_url, self.allow_hosts)
        except ValidationError:
            self.metrics.rejections.labels(service.name, "invalid").inc()
            raise
        return model

    async def _check_deliveries(
        self, service: ServiceConfig, callback_url: str | None, deliveries: Sequence[DeliverySpec]
    ) -> None:
        """One delivery per channel (a `callback_url` is the webhook's), and a webhook's URL checked
        as a callback URL is (422 naming `deliveries` or `callback_url`)."""
        try:
            channels = [d.channel for d in deliveries] + ([WEBHOOK] if callback_url is not None else [])
            if len(set(channels)) != len(channels):
                raise ValidationError(f"one delivery per channel, not {sorted(channels)}", field="deliveries")
            for delivery in deliveries:
                if delivery.channel == WEBHOOK:
                    await self.callbacks.check(str(delivery.target.get("url", "")), self.allow_hosts)
        except ValidationError:
            self.metrics.rejections.labels(service.name, "invalid").inc()
            raise

    def _validate_input(self, service: ServiceConfig, payload: dict[str, Any], model: str | None) -> None:
        if self.validate_input is None:
            return
        try:
            self.validate_input(service.engine, service.model_options(model), payload)
        except SwellError:
            raise
        except Exception as exc:  # a validator's own bug must not become a 500 for the client
            log.exception("the %s engine's input validator failed", service.engine)
            raise ValidationError(
                f"the {service.engine} engine refused the input: {exc}", field="input"
            ) from None

    async def _screen(self, service: ServiceConfig, payload: dict[str, Any], door: str) -> None:
        """The request filter, after validation and before admission: a refused job is counted in
        `swell_requests_refused_total{service,door}` and never queued."""
        try:
            await self.filter.check(service.name, payload)
        except Refused:
            self.metrics.refused.labels(service.name, door).inc()
            raise

    async def _store(self, spec: JobSpec, service: ServiceConfig) -> tuple[Job, bool]:
        try:
            return await self.commits.submit(spec, service.queue_limit)
        except SwellError as exc:
            self.metrics.rejections.labels(service.name, rejection(exc)).inc()
            raise

    # -- follow -----------------------------------------------------------------------------------

    async def wait(self, job: Job | str, seconds: float, is_disconnected: Disconnected) -> Job:
        """The job once it is final, `seconds` have passed or the client has left (whichever comes
        first); the event loop serves other requests meanwhile."""
        job = job if isinstance(job, Job) else await self.storage.get(job)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        interval = FIRST_POLL
        while not job.state.final:
            remaining = deadline - loop.time()
            if remaining <= 0 or await is_disconnected():
                break
            await asyncio.sleep(min(interval, remaining))
            interval = min(LAST_POLL, interval * 1.5)
            job = await self.storage.get(job.id)
        return job

    async def watch(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        """The job's events after seq `after`, as they are appended, ending with its final state
        event (or at once when the job is final and nothing is left to read). `JobNotFound` for
        an unknown job, before anything is yielded."""
        job = await self.storage.get(job_id)
        cursor, interval, running = after, FIRST_WATCH, job.state is JobState.LEASED
        while True:
            events = await self.storage.events(job_id, after=cursor, limit=PAGE)
            for event in events:
                yield event
                if is_final(event):
                    return
                if event.kind == EventKind.STATE.value:
                    running = event.data.get("state") == JobState.LEASED.value
            if events:
                cursor, interval = events[-1].seq, FIRST_WATCH
                continue
            if job.state.final:
                return  # final, and its final event was read before `after`
            await asyncio.sleep(interval)
            interval = min(RUNNING_WATCH if running else LAST_WATCH, interval * 1.5)
            job = await self.storage.get(job_id)  # final with nothing more to read: the loop ends

    async def finish(self, job: Job, seconds: float, is_disconnected: Disconnected, door: str) -> Job:
        """`wait`, for a door that answers only with a final job: the job once final or after
        `seconds` (the door then answers its own 504); when the client left first, its job is
        cancelled (`abandon`) and `Unavailable` raised."""
        job = await self.wait(job, seconds, is_disconnected)
        if not job.state.final and await is_disconnected():
            self.abandon(job.id, door)
            raise Unavailable("the client went away; its job is cancelled")
        return job

    def abandon(self, job_id: str, door: str) -> None:
        """Cancel `job_id` in the background because its `door` client left (the caller may itself
        be being cancelled, so the cancel runs as a task of its own); a failure is logged."""
        task = asyncio.get_running_loop().create_task(self._abandon(job_id, door))
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)

    async def _abandon(self, job_id: str, door: str) -> None:
        try:
            job = await self.cancel(job_id)
        except SwellError as exc:
            log.warning("cancelling job %s after its %s client left failed: %s", job_id, door, exc)
        else:
            if not job.state.final or job.state is JobState.CANCELLED:
                log.info("job %s cancelled: its %s client left", job_id, door)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job, or ask the worker running one to stop it; a final job is left as
        it is (no Conflict: a door cancels when its client leaves, whatever the job's state)."""
        try:
            return await self.storage.cancel(job_id)
        except Conflict:
            return await self.storage.get(job_id)

    def close(self) -> None:
        self.callbacks.close()


def job_model(service: ServiceConfig, model: str | None) -> str | None:
    """The checkpoint a job of `service` runs on: `model`, which must be a key of the service's
    `models` (422 naming `model`), or its `default_model` when the job names none. A service
    without `models` keeps a job's `model` as given (a hint the worker's engine may ignore)."""
    if not service.models:
        return model
    if model is None:
        return service.default_model
    if model not in service.models:
        known = ", ".join(service.models)
        raise ValidationError(
            f"no model {model!r} in service {service.name!r} (known: {known})", field="model"
        )
    return model


def rejection(error: SwellError) -> str:
    """The `reason` label a refused submit is counted under."""
    if isinstance(error, QueueFull):
        return "queue_full"
    if isinstance(error, Conflict):
        return "conflict"
    if isinstance(error, Unavailable):
        return "unavailable"
    return "error"


__all__ = ["Submissions", "job_model", "rejection"]
