"""The HTTP gateway: Swell's `/v1` jobs API, health, metrics and the OpenAPI document.

    POST   /v1/jobs                      submit; 202 while the job is not final, 200 once it is
    GET    /v1/jobs                      newest first; ?service=&state=&limit=
    GET    /v1/jobs/{id}                 one job
    DELETE /v1/jobs/{id}                 cancel a queued job (409 once leased or final)
    GET    /v1/jobs/{id}/files/{name}    a file the job wrote to the data dir
    GET    /v1/services                  services with queue depth by state and their replicas
    GET    /healthz, /metrics, /openapi.json, /docs   (no key needed)

A submit answers with the job. The status follows the job's state, not how it was reached: 202
while the job is queued or running, 200 once it is final (after `wait`, or on an idempotent repeat
of a finished job). An idempotent repeat carries `Idempotent-Replayed: true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from swell.core.clock import Clock, SystemClock
from swell.core.config import ServiceConfig, Settings, SwellConfig
from swell.core.errors import NotFound, QueueFull, ServiceNotFound, SwellError, ValidationError
from swell.core.jobs import Job, JobSpec, JobState
from swell.core.replicas import ReplicaView
from swell.gateway.auth import bearer_key
from swell.gateway.batching import GroupCommit
from swell.gateway.errors import install_error_handlers
from swell.gateway.limits import BodyLimit
from swell.gateway.metrics import WAITED, AckTimer, GatewayMetrics
from swell.gateway.schemas import ErrorView, JobList, JobView, SubmitRequest
from swell.gateway.urls import check_callback_url
from swell.queue.base import QueueBackend

log = logging.getLogger("swell.gateway")

Validator = Callable[[str, dict[str, Any], dict[str, Any]], None]

FIRST_POLL = 0.005  # seconds between looks at a job a submit waits for, growing to LAST_POLL
LAST_POLL = 0.1
METRICS_EVERY = 1.0  # seconds between reads of newly finished jobs for the histograms


def create_app(
    config: SwellConfig,
    settings: Settings,
    queue: QueueBackend,
    *,
    replicas: ReplicaView | None = None,
    clock: Clock = SystemClock(),
    registry: CollectorRegistry | None = None,
    extra_services: Callable[[], dict[str, dict[str, Any]]] | None = None,
) -> FastAPI:
    """The ASGI app over `queue`. `extra_services()` adds keys to each `/v1/services` entry."""
    metrics = GatewayMetrics(registry or CollectorRegistry(), queue, replicas=replicas, clock=clock)
    api = JobsAPI(config, settings, queue, metrics, replicas=replicas, extra_services=extra_services)
    app = FastAPI(
        title="Swell",
        summary="Serving generative-AI models: a fast-acknowledging jobs API over a durable queue",
        version="0.1.0",
        lifespan=_lifespan(metrics),
    )
    app.state.metrics = metrics
    app.state.registry = metrics.registry
    install_error_handlers(app)
    app.include_router(api.router(settings))
    app.add_api_route("/healthz", health, methods=["GET"], tags=["operations"])
    app.add_api_route("/metrics", _scrape(metrics), methods=["GET"], tags=["operations"])
    app.add_middleware(BodyLimit, max_bytes=config.gateway.max_body_bytes)
    app.add_middleware(AckTimer, histogram=metrics.ack)
    return app


async def health() -> dict[str, str]:
    return {"status": "ok"}


class JobsAPI:
    """The `/v1` handlers and what they share."""

    def __init__(
        self,
        config: SwellConfig,
        settings: Settings,
        queue: QueueBackend,
        metrics: GatewayMetrics,
        *,
        replicas: ReplicaView | None,
        extra_services: Callable[[], dict[str, dict[str, Any]]] | None,
    ) -> None:
        self.services = {service.name: service for service in config.services}
        self.max_wait = config.gateway.max_wait_seconds
        self.queue = queue
        self.submits = GroupCommit(queue)
        self.metrics = metrics
        self.replicas = replicas
        self.extra_services = extra_services
        self.allow_hosts = settings.callback_allow_hosts
        self.files = settings.data_dir / "files"
        self.validate_input = _engine_validator()

    def router(self, settings: Settings) -> APIRouter:
        auth = [Depends(bearer_key(settings.api_key))] if settings.auth else []
        router = APIRouter(prefix="/v1", dependencies=auth, tags=["jobs"])
        router.add_api_route("/jobs", self.submit, methods=["POST"], status_code=202, responses=_SUBMIT)
        router.add_api_route("/jobs", self.list_jobs, methods=["GET"], responses=_LIST)
        router.add_api_route("/jobs/{job_id}", self.get_job, methods=["GET"], responses=_JOB)
        router.add_api_route("/jobs/{job_id}", self.cancel_job, methods=["DELETE"], responses=_CANCEL)
        router.add_api_route("/jobs/{job_id}/files/{name}", self.job_file, methods=["GET"])
        router.add_api_route("/services", self.list_services, methods=["GET"], tags=["services"])
        return router

    # -- routes -----------------------------------------------------------------------------------

    async def submit(self, body: SubmitRequest, request: Request) -> JSONResponse:
        """Queue a job and answer at once, or after up to `wait` seconds with its result."""
        service = self._service(body.service)
        await self._check(body, service)
        try:
            job, created = await self.submits.submit(self._spec(body, service), service.queue_limit)
        except QueueFull:
            self.metrics.rejections.labels(service.name, "queue_full").inc()
            raise
        if created:
            self.metrics.arrivals.labels(service.name).inc()
        if body.wait and not job.state.final:
            request.scope[WAITED] = True
            job = await self._wait(job, body.wait, request)
        headers = {"Location": f"/v1/jobs/{job.id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        status = 200 if job.state.final else 202
        return JSONResponse(job.to_public(), status_code=status, headers=headers)

    async def list_jobs(
        self,
        service: str | None = None,
        state: JobState | None = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> JSONResponse:
        """Jobs, newest first."""
        jobs = self.queue.jobs(service=service, state=state, limit=limit)
        return JSONResponse({"jobs": [job.to_public() for job in jobs]})

    async def get_job(self, job_id: str) -> JSONResponse:
        return JSONResponse(self.queue.get(job_id).to_public())

    async def cancel_job(self, job_id: str) -> JSONResponse:
        """Cancel a queued job; 409 once a worker holds it or it is final."""
        return JSONResponse(self.queue.cancel(job_id).to_public())

    async def job_file(self, job_id: str, name: str) -> FileResponse:
        """A file the job's engine wrote (large binary outputs)."""
        if not _plain_name(name):
            raise ValidationError("a file name is one plain path component", field="name")
        job = self.queue.get(job_id)
        path = self.files / job.id / name
        if not path.is_file():
            raise NotFound(f"job {job.id} has no file {name!r}", field="name")
        return FileResponse(path)

    async def list_services(self) -> dict[str, list[dict[str, Any]]]:
        depth = self.queue.depth()
        replicas = self.replicas.replicas() if self.replicas is not None else []
        extra = self.extra_services() if self.extra_services is not None else {}
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
                    **extra.get(s.name, {}),
                }
                for s in self.services.values()
            ]
        }

    # -- helpers ----------------------------------------------------------------------------------

    def _service(self, name: str) -> ServiceConfig:
        service = self.services.get(name)
        if service is None:
            self.metrics.rejections.labels("", "unknown_service").inc()
            raise ServiceNotFound(f"no service named {name!r}", field="service")
        return service

    async def _check(self, body: SubmitRequest, service: ServiceConfig) -> None:
        """Everything a submit is refused for before it reaches the queue (422)."""
        try:
            if body.wait > self.max_wait:
                raise ValidationError(f"wait is at most {self.max_wait:g} seconds", field="wait")
            self._validate_input(service, body.input)
            if body.callback_url is not None:
                await asyncio.to_thread(check_callback_url, body.callback_url, self.allow_hosts)
        except ValidationError:
            self.metrics.rejections.labels(service.name, "invalid").inc()
            raise

    def _validate_input(self, service: ServiceConfig, payload: dict[str, Any]) -> None:
        if self.validate_input is None:
            return
        try:
            self.validate_input(service.engine, service.options, payload)
        except SwellError:
            raise
        except Exception as exc:  # a validator's own bug must not become a 500 for the client
            log.exception("the %s engine's input validator failed", service.engine)
            raise ValidationError(
                f"the {service.engine} engine refused the input: {exc}", field="input"
            ) from None

    @staticmethod
    def _spec(body: SubmitRequest, service: ServiceConfig) -> JobSpec:
        return JobSpec(
            service=service.name,
            input=body.input,
            priority=body.priority,
            idempotency_key=body.idempotency_key,
            callback_url=body.callback_url,
            tenant=body.tenant,
            model=body.model,
            max_attempts=service.max_attempts,
            timeout=service.job_timeout,
        )

    async def _wait(self, job: Job, seconds: float, request: Request) -> Job:
        """Poll the job, 5 ms apart growing to 100 ms, until it is final, `seconds` pass or the
        client leaves; the event loop keeps serving other requests meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        interval = FIRST_POLL
        while not job.state.final:
            remaining = deadline - loop.time()
            if remaining <= 0 or await request.is_disconnected():
                break
            await asyncio.sleep(min(interval, remaining))
            interval = min(LAST_POLL, interval * 1.5)
            job = self.queue.get(job.id)
        return job


def _plain_name(name: str) -> bool:
    return bool(name) and ".." not in name and not any(c in name for c in "/\\\x00") and name != "."


def _engine_validator() -> Validator | None:
    """The engines' input validator, when the engines package provides one."""
    try:
        from swell.engines.registry import validate_input
    except ModuleNotFoundError as exc:
        if exc.name not in ("swell.engines", "swell.engines.registry"):
            raise  # the registry exists but something it needs is missing: say so
        return None
    return validate_input  # type: ignore[no-any-return]


def _scrape(metrics: GatewayMetrics) -> Callable[[], Any]:
    async def prometheus_metrics() -> Response:
        """Prometheus text: queue depth, arrivals, rejections, replicas, latency histograms."""
        body = await asyncio.to_thread(_render, metrics)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return prometheus_metrics


def _render(metrics: GatewayMetrics) -> bytes:
    metrics.collect_finished()
    return generate_latest(metrics.registry)


def _lifespan(metrics: GatewayMetrics) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_collect_forever(metrics), name="gateway-metrics")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return lifespan


async def _collect_forever(metrics: GatewayMetrics) -> None:
    while True:
        try:
            await asyncio.to_thread(metrics.collect_finished)
        except Exception:
            log.exception("reading finished jobs for the metrics failed")
        await asyncio.sleep(METRICS_EVERY)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorView, "description": description}


_SUBMIT: dict[int | str, dict[str, Any]] = {
    200: {"model": JobView, "description": "The job is final (within `wait`, or a repeat of a finished job)"},
    202: {"model": JobView, "description": "Accepted: the job is queued or running"},
    401: _error("Missing or wrong API key"),
    404: _error("Unknown service"),
    413: _error("The body is over the configured size"),
    422: _error("Invalid request; `field` names the offending field"),
    429: _error("The service's queue is full; retry after `Retry-After` seconds"),
}
_JOB: dict[int | str, dict[str, Any]] = {200: {"model": JobView}, 404: _error("Unknown job")}
_LIST: dict[int | str, dict[str, Any]] = {200: {"model": JobList}, 422: _error("A bad filter")}
_CANCEL: dict[int | str, dict[str, Any]] = {**_JOB, 409: _error("The job is already running or final")}

__all__ = ["create_app"]
