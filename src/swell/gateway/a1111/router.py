"""The AUTOMATIC1111-compatible routes, so web UI clients and bots work unchanged.

    POST /sdapi/v1/txt2img, /sdapi/v1/img2img   one job each, answered when it is done
    GET  /sdapi/v1/sd-models                    the service's checkpoints (its `models` keys)
    GET  /sdapi/v1/samplers, /schedulers        the diffusers engine's sampler table
    GET  /sdapi/v1/loras                        the service's LoRA folder
    GET  /sdapi/v1/scripts                      none (only ControlNet runs, as an always-on script)
    GET  /sdapi/v1/options  POST /sdapi/v1/options   the caller's default checkpoint
    GET  /sdapi/v1/progress                     the caller's most recent job
    POST /internal/progress                     a job by the `force_task_id` it was submitted with
    POST /sdapi/v1/interrupt                    cancel the caller's most recent job
    GET  /controlnet/version, /controlnet/model_list, /controlnet/module_list

The web UI holds one global model and runs one generation at a time; here each request is a job
submitted through `Submissions` (so it queues, batches, scales and is filtered like any other), its
checkpoint is the job's `model`, routed by affinity to a worker that holds it, and nothing global
ever switches: `POST /options` with `sd_model_checkpoint` sets the default checkpoint of *that
caller* (per credential: see swell.gateway.auth.caller; kept in memory, so a gateway restart
forgets it). `progress` and `interrupt` are the caller's too, where the web UI's are the server's.

A generation waits for its job, up to the gateway's `max_wait_seconds` (then 504: the job runs on);
a client that leaves cancels its job. Errors are the web UI's `{"error", "detail", "body",
"errors"}` with its statuses (422 for a bad request, 404 for an unknown checkpoint, 401 with
`WWW-Authenticate: Basic`), plus Swell's own (403 refused by the request filter, 429 and 503 with
`Retry-After`).
"""

from __future__ import annotations

import base64
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Body, Depends, Query, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRouter
from pydantic import BaseModel, ConfigDict

from swell.core.clock import Clock, SystemClock
from swell.core.config import ServiceConfig, Settings, SwellConfig
from swell.core.errors import (
    AuthError,
    ConfigError,
    Conflict,
    NotFound,
    QueueFull,
    SwellError,
    Unavailable,
    ValidationError,
)
from swell.core.jobs import EventKind, Job, JobState
from swell.engines.results import ResultStore, open_result_store
from swell.gateway.a1111 import mapping
from swell.gateway.a1111.mapping import GenerationRequest
from swell.gateway.auth import bearer_key, caller
from swell.gateway.errors import shaped_route
from swell.gateway.metrics import WAITED
from swell.gateway.submissions import Submissions

log = logging.getLogger("swell.gateway")

DIFFUSERS = "diffusers"
MAX_CALLERS = 10_000  # callers whose state is kept (least recently seen dropped first)
MAX_TASKS = 256  # force_task_ids remembered per caller
EVENT_PAGE = 500
DEFAULT_STEPS = 25  # the diffusers engine's default, for progress of a job that names no steps
CONTROLNET_VERSION = 2


# -- errors -------------------------------------------------------------------------------------------


class TimedOut(SwellError):
    """The job was not done within `max_wait_seconds` (504; it runs on)."""

    status_code = 504


def a1111_error(error: SwellError) -> JSONResponse:
    """`error` as the web UI answers one: `{"error", "detail", "body", "errors"}`; the field named in
    the message, in the request's terms."""
    where = mapping.request_field(error.field)
    message = error.message
    if where and where not in ("body", "input") and not message.startswith(where):
        message = f"{where}: {message}"
    body = {"error": type(error).__name__, "detail": message, "body": "", "errors": message}
    return JSONResponse(body, status_code=error.status_code, headers=_headers(error))


def _headers(error: SwellError) -> dict[str, str]:
    if isinstance(error, AuthError):
        return {"WWW-Authenticate": 'Basic realm="swell"'}
    if isinstance(error, QueueFull | Unavailable):
        return {"Retry-After": str(max(1, math.ceil(error.retry_after)))}
    return {}


A1111Route = shaped_route("A1111Route", a1111_error)
"""A route whose every refusal (auth, body validation, Swell's errors) is in the web UI's shape."""


# -- requests -----------------------------------------------------------------------------------------


class ProgressRequest(BaseModel):
    """`POST /internal/progress`, as the web UI's page polls it."""

    model_config = ConfigDict(extra="ignore")

    id_task: str
    id_live_preview: int = -1
    live_preview: bool = True


@dataclass
class CallerState:
    """What the door remembers of one caller (in memory)."""

    checkpoint: str | None = None  # the title POST /options set
    job_id: str | None = None  # the most recent generation
    tasks: OrderedDict[str, str] = field(default_factory=OrderedDict)  # force_task_id -> job id
    preview_job: str | None = None
    preview_cursor: int = 0  # the seq of the last event read for the preview
    preview: tuple[int, str] | None = None  # (seq, file name) of the newest preview


# -- the door -----------------------------------------------------------------------------------------


class A1111API:
    """The web UI's routes over a `Submissions`."""

    def __init__(
        self,
        submissions: Submissions,
        config: SwellConfig,
        settings: Settings,
        *,
        results: ResultStore | None = None,
        clock: Clock = SystemClock(),
    ) -> None:
        self.submissions = submissions
        self.max_wait = config.gateway.max_wait_seconds
        self.service = main_service(config)
        self.controlnet = controlnet_service(config, self.service)
        self.results = results or open_result_store(config.cluster.results_url, settings.data_dir)
        self.clock = clock
        self.callers: OrderedDict[str, CallerState] = OrderedDict()

    def routers(self, settings: Settings) -> list[APIRouter]:
        """`/sdapi/v1`, `/internal` and `/controlnet`, behind the API key (Bearer or Basic)."""
        auth = [Depends(bearer_key(settings.api_key))] if settings.auth else []
        sdapi = APIRouter(prefix="/sdapi/v1", dependencies=auth, tags=["a1111"], route_class=A1111Route)
        sdapi.add_api_route("/txt2img", self.txt2img, methods=["POST"])
        sdapi.add_api_route("/img2img", self.img2img, methods=["POST"])
        for path, handler in (
            ("/sd-models", self.sd_models),
            ("/samplers", self.samplers),
            ("/schedulers", self.schedulers),
            ("/loras", self.loras),
            ("/scripts", self.scripts),
            ("/options", self.get_options),
            ("/progress", self.progress),
        ):
            sdapi.add_api_route(path, handler, methods=["GET"])
        sdapi.add_api_route("/options", self.set_options, methods=["POST"])
        sdapi.add_api_route("/interrupt", self.interrupt, methods=["POST"])
        internal = APIRouter(prefix="/internal", dependencies=auth, tags=["a1111"], route_class=A1111Route)
        internal.add_api_route("/progress", self.task_progress, methods=["POST"])
        control = APIRouter(prefix="/controlnet", dependencies=auth, tags=["a1111"], route_class=A1111Route)
        control.add_api_route("/version", self.controlnet_version, methods=["GET"])
        control.add_api_route("/model_list", self.controlnet_models, methods=["GET"])
        control.add_api_route("/module_list", self.controlnet_modules, methods=["GET"])
        return [sdapi, internal, control]

    # -- generation -------------------------------------------------------------------------------

    async def txt2img(self, body: GenerationRequest, request: Request) -> JSONResponse:
        """Text to image, answered with the images when the job is done."""
        return await self._generate(body, request, img2img=False)

    async def img2img(self, body: GenerationRequest, request: Request) -> JSONResponse:
        """Image to image from `init_images[0]`."""
        return await self._generate(body, request, img2img=True)

    async def _generate(self, body: GenerationRequest, request: Request, *, img2img: bool) -> JSONResponse:
        state = self._caller(request)
        service = self._route(body)
        model = self._model(service, body, state)
        payload = self._translated(service, lambda: mapping.job_input(body, img2img=img2img))
        job, _ = await self.submissions.submit(service.name, payload, model=model, door="a1111")
        self._remember(state, job, body.force_task_id)
        job = await self._finished(job, request)
        images = await self.submissions.storage.run(self._read_images, job) if body.send_images else []
        answer = mapping.generation_answer(
            body, job.result or {}, images, job_id=job.id, created_at=job.created_at
        )
        return JSONResponse(answer)

    def _route(self, body: GenerationRequest) -> ServiceConfig:
        """The controlnet service for a request with a ControlNet unit, the door's service otherwise."""
        if body.controlnet_units() and self.controlnet is not None:
            return self.controlnet
        return self.service

    def _model(self, service: ServiceConfig, body: GenerationRequest, state: CallerState) -> str | None:
        """The job's checkpoint: the request's (unknown: 404), else the caller's default where this
        service serves it, else the service's default."""
        title = body.checkpoint()
        if title is not None:
            return mapping.checkpoint_key(service, title)
        if state.checkpoint is None:
            return None
        try:
            return mapping.checkpoint_key(service, state.checkpoint)
        except NotFound:
            return None  # the caller's default is another service's checkpoint (ControlNet routing)

    def _translated(self, service: ServiceConfig, translate: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            return translate()
        except ValidationError:
            self.submissions.metrics.rejections.labels(service.name, "invalid").inc()
            raise

    def _remember(self, state: CallerState, job: Job, task_id: str | None) -> None:
        state.job_id = job.id
        if task_id:
            state.tasks[task_id] = job.id
            state.tasks.move_to_end(task_id)
            while len(state.tasks) > MAX_TASKS:
                state.tasks.popitem(last=False)

    async def _finished(self, job: Job, request: Request) -> Job:
        """The job once done; 504 when it is not within `max_wait`, its cancel when the client left."""
        request.scope[WAITED] = True
        job = await self.submissions.finish(job, self.max_wait, request.is_disconnected, "A1111")
        if job.state.final:
            return _succeeded(job)
        raise TimedOut(f"job {job.id} is not finished after {self.max_wait:g} seconds; it runs on")

    def _read_images(self, job: Job) -> list[bytes]:
        """The bytes of each image file of a finished job (in the storage pool: disk or object store)."""
        images = []
        for entry in (job.result or {}).get("images") or []:
            with self.results.open(job.id, str(entry["file"])) as file:
                images.append(file.read())
        return images

    # -- lists ------------------------------------------------------------------------------------

    async def sd_models(self) -> JSONResponse:
        return JSONResponse(mapping.sd_models(self.service))

    async def samplers(self) -> JSONResponse:
        return JSONResponse(mapping.sampler_list())

    async def schedulers(self) -> JSONResponse:
        return JSONResponse(mapping.scheduler_list())

    async def loras(self) -> JSONResponse:
        """The `.safetensors` files of the service's local LoRA folder (a `lora_dataset` is not listed)."""
        folder = self.service.options.get("loras")
        names = await self.submissions.storage.run(lora_files, folder) if folder else []
        return JSONResponse(
            [{"name": n, "alias": n, "path": f"{n}.safetensors", "metadata": {}} for n in names]
        )

    async def scripts(self) -> JSONResponse:
        return JSONResponse({"txt2img": [], "img2img": []})

    async def get_options(self, request: Request) -> JSONResponse:
        """The few options a client reads: the caller's checkpoint (else the service's default)."""
        state = self._caller(request)
        checkpoint = (
            state.checkpoint or self.service.default_model or mapping.checkpoint_names(self.service)[0]
        )
        return JSONResponse(
            {
                "sd_model_checkpoint": checkpoint,
                "sd_checkpoint_hash": None,
                "samples_format": "png",
                "sd_vae": "Automatic",
                "CLIP_stop_at_last_layers": 1,
                "eta_noise_seed_delta": 0,
            }
        )

    async def set_options(self, request: Request, body: dict[str, Any] = Body(...)) -> JSONResponse:
        """`sd_model_checkpoint` sets the caller's default checkpoint (an unknown one: 404); other
        options are ignored."""
        title = body.get("sd_model_checkpoint")
        state = self._caller(request)
        if title is not None:
            if not isinstance(title, str):
                raise ValidationError("must be a checkpoint's title", field="sd_model_checkpoint")
            mapping.checkpoint_key(self.service, title)
            state.checkpoint = mapping.bare_checkpoint(title)
        return JSONResponse(None)

    # -- progress ---------------------------------------------------------------------------------

    async def progress(self, request: Request, skip_current_image: bool = Query(False)) -> JSONResponse:
        """The caller's most recent job as the web UI's progress: 0 and no job when it is done."""
        state = self._caller(request)
        job = await self._job(state.job_id)
        preview = None
        if job is not None and not job.state.final and not skip_current_image:
            found = await self._preview(state, job)
            preview = base64.b64encode(found[1]).decode() if found else None
        return JSONResponse(progress_answer(job, preview, self._steps(job), self.clock.now()))

    async def task_progress(self, body: ProgressRequest, request: Request) -> JSONResponse:
        """The web UI page's progress of one task (`force_task_id`), with its live preview as a data URL."""
        state = self._caller(request)
        job = await self._job(state.tasks.get(body.id_task))
        found = None
        if job is not None and not job.state.final and body.live_preview:
            found = await self._preview(state, job)
        return JSONResponse(task_answer(job, found, body.id_live_preview, self.clock.now()))

    async def interrupt(self, request: Request) -> JSONResponse:
        """Cancel the caller's most recent job (queued: at once; running: at its next step)."""
        state = self._caller(request)
        if state.job_id is not None:
            await self.submissions.cancel(state.job_id)
        return JSONResponse({})

    async def _job(self, job_id: str | None) -> Job | None:
        if job_id is None:
            return None
        try:
            return await self.submissions.storage.get(job_id)
        except NotFound:
            return None

    async def _preview(self, state: CallerState, job: Job) -> tuple[int, bytes] | None:
        """The newest preview of `job` (its seq and PNG bytes), reading only events not read before."""
        if state.preview_job != job.id:
            state.preview_job, state.preview_cursor, state.preview = job.id, 0, None
        while True:
            events = await self.submissions.storage.events(
                job.id, after=state.preview_cursor, limit=EVENT_PAGE
            )
            for event in events:
                if event.kind == EventKind.PROGRESS.value and event.data.get("preview"):
                    state.preview = (event.seq, str(event.data["preview"]))
            if events:
                state.preview_cursor = events[-1].seq
            if len(events) < EVENT_PAGE:
                break
        if state.preview is None:
            return None
        seq, name = state.preview
        try:
            return seq, await self.submissions.storage.run(self._read_file, job.id, name)
        except NotFound:
            return None

    def _read_file(self, job_id: str, name: str) -> bytes:
        with self.results.open(job_id, name) as file:
            return file.read()

    def _steps(self, job: Job | None) -> int:
        if job is None:
            return 0
        service = self.submissions.services.get(job.service)
        try:
            options = service.model_options(job.model) if service is not None else {}
        except KeyError:  # a checkpoint the service no longer has
            options = {}
        steps = job.input.get("steps") or options.get("steps")
        return int(steps or DEFAULT_STEPS)

    def _caller(self, request: Request) -> CallerState:
        key = caller(request)
        state = self.callers.pop(key, None) or CallerState()
        self.callers[key] = state
        while len(self.callers) > MAX_CALLERS:
            self.callers.popitem(last=False)
        return state

    # -- ControlNet -------------------------------------------------------------------------------

    async def controlnet_version(self) -> JSONResponse:
        return JSONResponse({"version": CONTROLNET_VERSION})

    async def controlnet_models(self) -> JSONResponse:
        """The ControlNet model of the service ControlNet requests go to (none when there is none)."""
        folder = self.controlnet.options.get("controlnet") if self.controlnet else None
        return JSONResponse({"model_list": [Path(str(folder)).name] if folder else []})

    async def controlnet_modules(self) -> JSONResponse:
        return JSONResponse({"module_list": list(mapping.CONTROLNET_MODULES)})


# -- services -------------------------------------------------------------------------------------------


def is_diffusers(service: ServiceConfig) -> bool:
    """Whether `service` runs the diffusers engine (by its registry name or the spec it names)."""
    if service.engine == DIFFUSERS:
        return True
    from swell.engines.registry import engine_spec  # light: specs import no torch

    try:
        spec = engine_spec(service.engine)
    except SwellError:
        return False
    return spec is not None and spec.name == DIFFUSERS


def main_service(config: SwellConfig) -> ServiceConfig:
    """`a1111.service`, else the first diffusers service; ConfigError naming `a1111.service`."""
    name = config.a1111.service
    diffusers = [s for s in config.services if is_diffusers(s)]
    if name is None:
        if not diffusers:
            raise ConfigError("no diffusers service to serve the A1111 API", key="a1111.service")
        return diffusers[0]
    return _diffusers_named(config, name, "a1111.service")


def controlnet_service(config: SwellConfig, main: ServiceConfig) -> ServiceConfig | None:
    """Where requests with a ControlNet unit go: `a1111.controlnet_service`, else `main` when it has a
    ControlNet, else the first diffusers service that has one (None: there is none)."""
    if config.a1111.controlnet_service is not None:
        return _diffusers_named(config, config.a1111.controlnet_service, "a1111.controlnet_service")
    if main.options.get("controlnet"):
        return main
    return next((s for s in config.services if is_diffusers(s) and s.options.get("controlnet")), None)


def _diffusers_named(config: SwellConfig, name: str, key: str) -> ServiceConfig:
    for service in config.services:
        if service.name == name:
            if not is_diffusers(service):
                raise ConfigError(f"service {name!r} does not run the diffusers engine", key=key)
            return service
    raise ConfigError(f"no service named {name!r}", key=key)


def serves_a1111(config: SwellConfig) -> bool:
    """Whether to mount the door: it is not turned off, and names a service or has a diffusers one."""
    if not config.a1111.enabled:
        return False
    return config.a1111.service is not None or any(is_diffusers(s) for s in config.services)


def lora_files(folder: str) -> list[str]:
    """The stems of the `.safetensors` files in `folder` (none when it is missing)."""
    path = Path(folder)
    if not path.is_dir():
        return []
    return sorted(p.stem for p in path.glob("*.safetensors") if p.is_file())


# -- answers ---------------------------------------------------------------------------------------------


def _succeeded(job: Job) -> Job:
    if job.state is JobState.SUCCEEDED:
        return job
    if job.state is JobState.CANCELLED:
        raise Conflict(f"job {job.id} was interrupted")
    raise SwellError(f"job {job.id} {job.state.value}: {job.error or 'no reason given'}")


def progress_answer(job: Job | None, preview: str | None, steps: int, now: float) -> dict[str, Any]:
    """`/sdapi/v1/progress` for the caller's most recent job (idle when there is none or it is done)."""
    if job is None or job.state.final:
        return {"progress": 0.0, "eta_relative": 0.0, "state": _state(job, 0, 0), "current_image": None,
                "textinfo": None}  # fmt: skip
    fraction = float(job.progress or 0.0)
    running = job.state is JobState.LEASED
    step = min(steps, round(fraction * steps)) if running else 0
    return {
        "progress": fraction,
        "eta_relative": _eta(job, fraction, now),
        "state": _state(job, 1, step, steps),
        "current_image": preview,
        "textinfo": job.progress_message or ("Running" if running else "In queue..."),
    }


def _state(job: Job | None, count: int, step: int, steps: int = 0) -> dict[str, Any]:
    return {
        "skipped": False,
        "interrupted": bool(job is not None and (job.state is JobState.CANCELLED or job.cancel_requested)),
        "stopping_generation": False,
        "job": job.id if job is not None and count else "",
        "job_count": count,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": step,
        "sampling_steps": steps,
    }


def _eta(job: Job, fraction: float, now: float) -> float:
    """Seconds left at the pace so far (0 until the job has started and moved)."""
    if job.started_at is None or fraction <= 0:
        return 0.0
    elapsed = max(0.0, now - job.started_at)
    return max(0.0, elapsed / fraction - elapsed)


def task_answer(job: Job | None, preview: tuple[int, bytes] | None, seen: int, now: float) -> dict[str, Any]:
    """`/internal/progress` for one task: active, queued, completed, progress, eta, live preview."""
    if job is None:
        return {"active": False, "queued": False, "completed": False, "progress": None, "eta": None,
                "live_preview": None, "id_live_preview": -1, "textinfo": "Waiting..."}  # fmt: skip
    queued = job.state is JobState.QUEUED
    active = job.state is JobState.LEASED
    fraction = float(job.progress or 0.0) if active else (1.0 if job.state.final else 0.0)
    fresh = preview is not None and preview[0] > seen
    return {
        "active": active,
        "queued": queued,
        "completed": job.state.final,
        "progress": fraction,
        "eta": _eta(job, fraction, now) if active else None,
        "live_preview": "data:image/png;base64," + base64.b64encode(preview[1]).decode()
        if fresh and preview
        else None,
        "id_live_preview": preview[0] if preview is not None else seen,
        "textinfo": "In queue..."
        if queued
        else (job.progress_message or ("Done" if job.state.final else "Running")),
    }


__all__ = ["A1111API", "a1111_error", "main_service", "serves_a1111"]
