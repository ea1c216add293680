"""The HTTP gateway: Swell's `/v1` jobs API, health, metrics and the OpenAPI document.

    POST   /v1/jobs                      submit; 202 while the job is not final, 200 once it is
    GET    /v1/jobs                      newest first; ?service=&state=&limit=&cursor=&include=result
    DELETE /v1/jobs?service=NAME         cancel every queued job of a service
    GET    /v1/jobs/{id}                 one job, with `progress` while it runs
    GET    /v1/jobs/{id}/events          its event log as server-sent events (resumable: Last-Event-ID)
    DELETE /v1/jobs/{id}                 cancel: a queued job at once (200), a running one is asked to
                                         stop (202, `cancel_requested`); 409 once final
    POST   /v1/jobs/{id}/retry           re-drive a dead, failed or cancelled job
    GET    /v1/jobs/{id}/files/{name}    a file the job wrote (data dir, or cluster.results_url)
    GET    /v1/services                  services with queue depth by state and their replicas
    GET    /healthz, /readyz, /metrics, /openapi.json, /docs   (no key needed)
    GET    /v1/models, POST /v1/chat/completions, /v1/completions, /v1/embeddings
                                         the OpenAI-compatible door (swell.gateway.openai)
    POST   /sdapi/v1/txt2img, /img2img, GET /sdapi/v1/sd-models, ... and /controlnet/*
                                         the AUTOMATIC1111-compatible door (swell.gateway.a1111),
                                         mounted when a diffusers service is configured
    POST   /discord/interactions         the Discord door (swell.gateway.discord): signed slash commands,
                                         mounted with a `discord:` section; its follow-ups are the
                                         outbox's `discord` channel

Every door submits through one `Submissions` (swell.gateway.submissions): service lookup,
validation, admission, idempotency, group commit and metrics are the same behind each.

Deliveries (webhooks, chat follow-ups) go through one outbox `Dispatcher` (swell.gateway.outbox),
built here with the webhook channel and any `channels` given (`app.state.dispatcher`), and run by
the app's lifespan unless `deliver=False`. A single job's answer shows its rows: `webhook` (state,
attempts, error) and `deliveries` (the same per channel); listings leave them out.

A submit answers with the job. The status follows the job's state, not how it was reached: 202
while the job is queued or running, 200 once it is final (after `wait`, or on an idempotent repeat
of a finished job). An idempotent repeat carries `Idempotent-Replayed: true`; a repeat of the key
with a different request is a 409.

No handler touches storage on the event loop: every queue call goes through `AsyncQueue` (its own
bounded pool), callback checks through `CallbackResolver` (another, with a deadline), and whatever
cannot keep up answers 503 with `Retry-After` at once (see `swell.gateway.limits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from swell.core.clock import Clock, SystemClock
from swell.core.config import ServiceConfig, Settings, SwellConfig
from swell.core.errors import (
    NotFound,
    ServiceNotFound,
    Unavailable,
    ValidationError,
)
from swell.core.jobs import WEBHOOK, Delivery, DeliverySpec, Job, JobState
from swell.core.replicas import ReplicaView
from swell.engines.results import open_result_store
from swell.gateway.a1111.router import A1111API, serves_a1111
from swell.gateway.auth import bearer_key
from swell.gateway.discord.interactions import discord_door
from swell.gateway.errors import install_error_handlers, retry_headers
from swell.gateway.events import HEADERS as SSE_HEADERS
from swell.gateway.events import EventStream, resume_point
from swell.gateway.files import JobFiles, plain_name
from swell.gateway.health import ServiceHealth, StorageHealth
from swell.gateway.limits import BodyLimit, GatewayLimits, InternalErrors, LagMonitor, Shedding
from swell.gateway.metrics import WAITED, AckTimer, GatewayMetrics
from swell.gateway.openai import OpenAIAPI
from swell.gateway.outbox import Channel, Dispatcher
from swell.gateway.schemas import (
    CancelledView,
    ErrorView,
    JobList,
    JobView,
    NotReadyView,
    StatusView,
    SubmitRequest,
)
from swell.gateway.storage import AsyncQueue
from swell.gateway.submissions import Submissions
from swell.gateway.webhooks import WebhookChannel
from swell.queue.base import QueueBackend

log = logging.getLogger("swell.gateway")

Validator = Callable[[str, dict[str, Any], dict[str, Any]], None]

METRICS_EVERY = 1.0  # seconds between reads of newly finished jobs for the histograms
INCLUDES = ("result",)


def create_app(
    config: SwellConfig,
    settings: Settings,
    queue: QueueBackend,
    *,
    replicas: ReplicaView | None = None,
    clock: Clock = SystemClock(),
    registry: CollectorRegistry | None = None,
    extra_services: Callable[[], dict[str, dict[str, Any]]] | None = None,
    limits: GatewayLimits | None = None,
    channels: Mapping[str, Channel] | None = None,
    deliver: bool = True,
) -> FastAPI:
    """The ASGI app over `queue`. `extra_services()` adds keys to each `/v1/services` entry;
    `limits` replaces those `config.gateway` sets; `channels` (name -> `Channel`) join the webhook
    channel in the outbox dispatcher, which the lifespan runs when `deliver`.

    Every route and middleware is mounted here; `app.state` holds the parts tests and `swell up`
    look at (`limits`, `storage`, `metrics`, `registry`, `lag`, `events`, `dispatcher`)."""
    limits = limits or GatewayLimits.of(config.gateway)
    storage = AsyncQueue(
        queue,
        threads=limits.storage_threads,
        max_backlog=limits.max_storage_backlog,
        retry_after=limits.retry_after_seconds,
    )
    metrics = GatewayMetrics(registry or CollectorRegistry(), queue, replicas=replicas)
    services = ServiceHealth(replicas, storage)
    ops = Operations(StorageHealth(storage.probe), services, config.services, storage, metrics)
    api = JobsAPI(config, settings, storage, metrics, limits, services, extra_services=extra_services)
    api.sizing = getattr(replicas, "sizing", None)  # right-sizing advice, where the backend gives it
    lag = LagMonitor(target=limits.max_loop_lag_seconds)
    discord = discord_door(config, settings, api.submissions, storage, clock)  # None unless configured
    door_channels: dict[str, Channel] = {discord.channel.name: discord.channel} if discord else {}
    dispatcher = _dispatcher(config, settings, queue, clock, {**door_channels, **(channels or {})})
    app = FastAPI(
        title="Swell",
        summary="Serving generative-AI models: a fast-acknowledging jobs API over a durable queue",
        version="0.1.0",
        lifespan=_lifespan(metrics, storage, lag, api, dispatcher if deliver else None),
    )
    app.state.dispatcher = dispatcher
    app.state.limits, app.state.storage, app.state.lag = limits, storage, lag
    app.state.metrics, app.state.registry, app.state.events = metrics, metrics.registry, api.event_stream
    install_error_handlers(app)
    app.include_router(api.router(settings))
    results = open_result_store(config.cluster.results_url, settings.data_dir)  # read back by the doors
    openai = OpenAIAPI(
        api.submissions, config.services, max_wait=config.gateway.max_wait_seconds, results=results
    )
    app.include_router(openai.router(settings))
    app.state.discord = discord
    if discord is not None:
        app.include_router(discord.router())
    if serves_a1111(config):
        a1111 = A1111API(api.submissions, config, settings, results=results, clock=clock)
        for router in a1111.routers(settings):
            app.include_router(router)
    app.include_router(ops.router())
    app.add_middleware(BodyLimit, max_bytes=config.gateway.max_body_bytes)
    app.add_middleware(AckTimer, histogram=metrics.ack)
    app.add_middleware(Shedding, monitor=lag, limits=limits, on_shed=api.shed)
    app.add_middleware(InternalErrors)
    return app


class Operations:
    """`/healthz` (liveness), `/readyz` (readiness) and `/metrics`: open routes, no key."""

    def __init__(
        self,
        storage_health: StorageHealth,
        services: ServiceHealth,
        configured: list[ServiceConfig],
        storage: AsyncQueue,
        metrics: GatewayMetrics,
    ) -> None:
        self.storage_health = storage_health
        self.services = services
        self.configured = configured
        self.storage = storage
        self.metrics = metrics

    def router(self) -> APIRouter:
        router = APIRouter(tags=["operations"])
        router.add_api_route("/healthz", self.healthz, methods=["GET"], responses=_HEALTH)
        router.add_api_route("/readyz", self.readyz, methods=["GET"], responses=_HEALTH)
        router.add_api_route("/metrics", self.prometheus_metrics, methods=["GET"])
        return router

    async def healthz(self) -> JSONResponse:
        """Liveness: 200 while the process answers and its storage takes writes; 503 otherwise."""
        problem = await self.storage_health.problem()
        return _probe_answer([problem] if problem else [], ok="ok", failing="failing")

    async def readyz(self) -> JSONResponse:
        """Readiness: storage takes writes and every service with `replicas.min > 0` has a ready
        replica; 503 with the reasons otherwise."""
        problem = await self.storage_health.problem()
        reasons = ([problem] if problem else []) + await self.services.not_ready(self.configured)
        return _probe_answer(reasons, ok="ready", failing="not ready")

    async def prometheus_metrics(self) -> Response:
        """Prometheus text: queue depth, arrivals, rejections, replicas, latency histograms."""
        body = await self.storage.run(_render, self.metrics)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def _probe_answer(reasons: list[str], *, ok: str, failing: str) -> JSONResponse:
    if not reasons:
        return JSONResponse({"status": ok})
    error = Unavailable("; ".join(reasons), retry_after=1.0)
    body = {**error.to_dict(), "status": failing, "reasons": reasons}
    return JSONResponse(body, status_code=503, headers=retry_headers(error))


class JobsAPI:
    """The `/v1` handlers and what they share."""

    def __init__(
        self,
        config: SwellConfig,
        settings: Settings,
        storage: AsyncQueue,
        metrics: GatewayMetrics,
        limits: GatewayLimits,
        health: ServiceHealth,
        *,
        extra_services: Callable[[], dict[str, dict[str, Any]]] | None,
    ) -> None:
        self.services = {service.name: service for service in config.services}
        self.storage = storage
        self.submissions = Submissions(
            config, settings, storage, metrics, limits, health, validate_input=_engine_validator()
        )
        self.metrics = metrics
        self.health = health
        self.extra_services = extra_services
        self.sizing: Callable[[], dict[str, dict[str, Any]]] | None = None
        self.files = JobFiles(settings.data_dir, config.cluster.results_url)
        self.event_stream = EventStream(storage)

    def router(self, settings: Settings) -> APIRouter:
        auth = [Depends(bearer_key(settings.api_key))] if settings.auth else []
        router = APIRouter(prefix="/v1", dependencies=auth, tags=["jobs"])
        router.add_api_route("/jobs", self.submit, methods=["POST"], status_code=202, responses=_SUBMIT)
        router.add_api_route("/jobs", self.list_jobs, methods=["GET"], responses=_LIST)
        router.add_api_route("/jobs", self.cancel_jobs, methods=["DELETE"], responses=_BULK_CANCEL)
        router.add_api_route("/jobs/{job_id}", self.get_job, methods=["GET"], responses=_JOB)
        router.add_api_route("/jobs/{job_id}", self.cancel_job, methods=["DELETE"], responses=_CANCEL)
        router.add_api_route(
            "/jobs/{job_id}/events",
            self.job_events,
            methods=["GET"],
            responses=_EVENTS,
            response_class=Response,
        )
        router.add_api_route(
            "/jobs/{job_id}/retry", self.retry_job, methods=["POST"], status_code=202, responses=_RETRY
        )
        router.add_api_route("/jobs/{job_id}/files/{name}", self.job_file, methods=["GET"], responses=_JOB)
        router.add_api_route("/services", self.list_services, methods=["GET"], tags=["services"])
        return router

    def shed(self, reason: str) -> None:
        self.metrics.rejections.labels("", reason).inc()

    # -- routes -----------------------------------------------------------------------------------

    async def submit(self, body: SubmitRequest, request: Request) -> JSONResponse:
        """Queue a job and answer at once, or after up to `wait` seconds with its result."""
        job, created = await self.submissions.submit(
            body.service,
            body.input,
            model=body.model,
            priority=body.priority,
            idempotency_key=body.idempotency_key,
            callback_url=body.callback_url,
            tenant=body.tenant,
            wait=body.wait,
        )
        if body.wait and not job.state.final:
            request.scope[WAITED] = True
            job = await self.submissions.wait(job, body.wait, request.is_disconnected)
        headers = {"Location": f"/v1/jobs/{job.id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        status = 200 if job.state.final else 202
        made = _made_now(job) if created and not job.state.final else None  # no read on the hot path
        return JSONResponse(await self._public(job, made), status_code=status, headers=headers)

    async def list_jobs(
        self,
        service: str | None = None,
        state: JobState | None = None,
        limit: int = Query(100, ge=1, le=1000),
        cursor: str | None = Query(None, max_length=200, description="`next_cursor` of the previous page"),
        include: str | None = Query(None, description="`result` to include each job's result"),
    ) -> JSONResponse:
        """Jobs, newest first, a page at a time; results only with `include=result`."""
        with_result = _includes(include)
        jobs = await self.storage.jobs(service=service, state=state, limit=limit, before=cursor)
        next_cursor = jobs[-1].id if len(jobs) == limit else None
        return JSONResponse({"jobs": [_listed(job, with_result) for job in jobs], "next_cursor": next_cursor})

    async def cancel_jobs(self, service: str | None = None) -> JSONResponse:
        """Cancel every queued job of `service` (leased jobs run on); answers how many."""
        if not service:
            raise ValidationError("name the service whose queued jobs to cancel", field="service")
        self._known(service)
        return JSONResponse({"cancelled": await self.storage.cancel_many(service=service)})

    async def get_job(self, job_id: str) -> JSONResponse:
        job, rows = await self.storage.run(_with_rows, self.storage.queue, job_id)
        return JSONResponse(await self._public(job, rows))

    async def cancel_job(self, job_id: str) -> JSONResponse:
        """Cancel a queued job (200, cancelled); ask the worker running one to stop it (202, still
        leased with `cancel_requested`: it ends `cancelled` at its next step); 409 once final."""
        job = await self.storage.cancel(job_id)
        return JSONResponse(await self._public(job), status_code=200 if job.state.final else 202)

    async def job_events(
        self,
        job_id: str,
        request: Request,
        after: int | None = Query(None, ge=0, description="Start after this event id"),
        last_event_id: str | None = Header(None, alias="Last-Event-ID", max_length=32),
    ) -> StreamingResponse:
        """The job's events as server-sent events (`id` seq, `event` kind, `data` JSON), ending after
        its final state; resumes after `Last-Event-ID` (or `after`)."""
        start = resume_point(last_event_id, after)
        job = await self.storage.get(job_id)
        body = self.event_stream.stream(job, start, request.is_disconnected)
        return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)

    async def retry_job(self, job_id: str) -> JSONResponse:
        """Send a dead, failed or cancelled job back to the queue (attempts reset, webhook re-armed)."""
        job = await self.storage.retry(job_id)
        headers = {"Location": f"/v1/jobs/{job.id}"}
        return JSONResponse(await self._public(job), status_code=202, headers=headers)

    async def job_file(self, job_id: str, name: str) -> Response:
        """A regular file the job's engine wrote into its own folder (large binary outputs)."""
        if not plain_name(name):
            raise ValidationError("a file name is one plain path component", field="name")
        job = await self.storage.get(job_id)
        response = await self.files.response(job.id, name, self.storage)
        if response is None:
            raise NotFound(f"job {job.id} has no file {name!r}", field="name")
        return response

    async def list_services(self) -> dict[str, list[dict[str, Any]]]:
        depth = await self.storage.depth()
        replicas = await self.health.replicas(fresh=True)
        extra = await self.storage.run(self.extra_services) if self.extra_services is not None else {}
        sizing = await self.storage.run(self.sizing) if self.sizing is not None else {}
        return {
            "services": [
                {
                    "name": s.name,
                    "engine": s.engine,
                    "max_batch_size": s.max_batch_size,
                    "replicas_min": s.replicas.min,
                    "replicas_max": s.replicas.max,
                    "queue": depth.get(s.name, {}),
                    "replicas": [r.to_public() for r in replicas if r.service == s.name],
                    "rightsizing": sizing.get(s.name),  # swell.brain.rightsize: advice, never applied
                    **extra.get(s.name, {}),
                }
                for s in self.services.values()
            ]
        }

    # -- helpers ----------------------------------------------------------------------------------

    async def _public(self, job: Job, rows: Sequence[Delivery] | None = None) -> dict[str, Any]:
        """The job as one job's answer shows it: with its outbox rows (read when not given)."""
        if rows is None:
            rows = await self.storage.run(self.storage.queue.deliveries, job.id)
        return with_deliveries(job.to_public(), rows)

    def _known(self, name: str) -> None:
        if name not in self.services:
            raise ServiceNotFound(f"no service named {name!r}", field="service")

    def close(self) -> None:
        self.submissions.close()


def _includes(include: str | None) -> bool:
    """Whether `include` (a comma-separated list) asks for results; 422 naming it for anything else."""
    names = {part.strip() for part in (include or "").split(",") if part.strip()}
    unknown = sorted(names - set(INCLUDES))
    if unknown:
        raise ValidationError(
            f"include takes {', '.join(INCLUDES)}; not {', '.join(unknown)}", field="include"
        )
    return "result" in names


def with_deliveries(body: dict[str, Any], rows: Sequence[Delivery]) -> dict[str, Any]:
    """A job's public body with its outbox rows: `deliveries` (per channel) and, for the webhook,
    `webhook` (its state, attempts and last error), as the API showed before rows existed."""
    if rows:
        body["deliveries"] = [{"channel": row.channel, **row.to_public()} for row in rows]
    for row in rows:
        if row.channel == WEBHOOK:
            body["webhook"] = row.to_public()
    return body


def _with_rows(queue: QueueBackend, job_id: str) -> tuple[Job, list[Delivery]]:
    """A job and its outbox rows, in one call off the loop."""
    return queue.get(job_id), queue.deliveries(job_id)


def _made_now(job: Job) -> list[Delivery]:
    """The rows a job's submit has just made (all waiting), known without reading them back."""
    if job.callback_url is None:
        return []
    return [Delivery.create(job.id, DeliverySpec(WEBHOOK, {"url": job.callback_url}), job.created_at)]


def _dispatcher(
    config: SwellConfig, settings: Settings, queue: QueueBackend, clock: Clock, extra: Mapping[str, Channel]
) -> Dispatcher:
    """The one outbox dispatcher: the webhook channel, then `extra` (which may replace it)."""
    webhook = WebhookChannel(
        settings.webhook_secret or "",
        clock=clock,
        timeout=config.gateway.webhook_timeout,
        allow_hosts=settings.callback_allow_hosts,
    )
    channels: dict[str, Channel] = {WEBHOOK: webhook, **extra}
    return Dispatcher(queue, channels, clock=clock, max_attempts=config.gateway.webhook_max_attempts)


def _listed(job: Job, with_result: bool) -> dict[str, Any]:
    public = job.to_public()
    if not with_result:
        public.pop("result", None)
    return public


def _engine_validator() -> Validator | None:
    """The engines' input validator, when the engines package provides one."""
    try:
        from swell.engines.registry import validate_input
    except ModuleNotFoundError as exc:
        if exc.name not in ("swell.engines", "swell.engines.registry"):
            raise  # the registry exists but something it needs is missing: say so
        return None
    return validate_input  # type: ignore[no-any-return]


def _render(metrics: GatewayMetrics) -> bytes:
    metrics.collect_finished()
    return generate_latest(metrics.registry)


def _lifespan(
    metrics: GatewayMetrics,
    storage: AsyncQueue,
    lag: LagMonitor,
    api: JobsAPI,
    dispatcher: Dispatcher | None,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(_collect_forever(metrics, storage), name="gateway-metrics"),
            asyncio.create_task(lag.run(), name="gateway-loop-lag"),
        ]
        stop = asyncio.Event()
        if dispatcher is not None:
            tasks.append(asyncio.create_task(dispatcher.run(stop), name="outbox"))
        try:
            yield
        finally:
            stop.set()  # the dispatcher ends its tries in flight (cut short: tried again later)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if dispatcher is not None:
                dispatcher.close()
            api.close()
            storage.close()

    return lifespan


async def _collect_forever(metrics: GatewayMetrics, storage: AsyncQueue) -> None:
    while True:
        try:
            await storage.run(metrics.collect_finished)
        except Exception:
            log.exception("reading finished jobs for the metrics failed")
        await asyncio.sleep(METRICS_EVERY)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorView, "description": description}


_UNAVAILABLE = _error("Storage is failing, the service keeps crashing, or the gateway is overloaded")
_SUBMIT: dict[int | str, dict[str, Any]] = {
    200: {"model": JobView, "description": "The job is final (within `wait`, or a repeat of a finished job)"},
    202: {"model": JobView, "description": "Accepted: the job is queued or running"},
    401: _error("Missing or wrong API key"),
    404: _error("Unknown service"),
    409: _error("The idempotency key was used for a different request"),
    413: _error("The body is over the configured size"),
    422: _error("Invalid request; `field` names the offending field"),
    429: _error("The service's queue is full; retry after `Retry-After` seconds"),
    503: _UNAVAILABLE,
}
_JOB: dict[int | str, dict[str, Any]] = {
    200: {"model": JobView},
    404: _error("Unknown job"),
    503: _UNAVAILABLE,
}
_LIST: dict[int | str, dict[str, Any]] = {200: {"model": JobList}, 422: _error("A bad filter or cursor")}
_CANCEL: dict[int | str, dict[str, Any]] = {
    **_JOB,
    202: {"model": JobView, "description": "The job is running: its worker is asked to stop it"},
    409: _error("The job is final"),
}
_EVENTS: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "Server-sent events until the job is final"},
    404: _error("Unknown job"),
    422: _error("A bad Last-Event-ID or after"),
    503: _UNAVAILABLE,
}
_RETRY: dict[int | str, dict[str, Any]] = {
    202: {"model": JobView, "description": "The job is queued again"},
    404: _error("Unknown job"),
    409: _error("The job is not dead, failed or cancelled"),
}
_BULK_CANCEL: dict[int | str, dict[str, Any]] = {
    200: {"model": CancelledView},
    404: _error("Unknown service"),
    422: _error("`service` is missing"),
}
_HEALTH: dict[int | str, dict[str, Any]] = {200: {"model": StatusView}, 503: {"model": NotReadyView}}

__all__ = ["create_app"]
