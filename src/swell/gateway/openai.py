"""The OpenAI-compatible door: the official SDKs, and everything built on them, onto Swell's jobs.

    GET  /v1/models                 services on the transformers, embeddings and http engines
    GET  /v1/models/{model}         one of them
    POST /v1/chat/completions       messages -> a transformers-shaped job (prompt rendered by the
                                    model's chat template in the worker)
    POST /v1/completions            prompt -> a transformers-shaped job
    POST /v1/embeddings             input -> an embeddings job (`texts`); float or base64 vectors
    POST /v1/images/generations     prompt, n, size -> a diffusers job; the PNGs as `b64_json`

The model id is the service name. Each request is one job submitted through `Submissions`, so the
queue, priorities, affinity, scaling and admission are the same as at `/v1/jobs`; an
`Idempotency-Key` header becomes the job's idempotency key, so the SDK's own retries (and a client's)
reattach to the job they started instead of queueing another.

`stream: true` answers server-sent events in OpenAI's chunk format: a first chunk with the role per
choice, the job's `delta` events as content (each event's `index` is its choice's; text no delta
carried arrives when the job ends), a chunk with each choice's `finish_reason`, with
`stream_options.include_usage` a last chunk with empty `choices` and the usage, then `data: [DONE]`.
A job that fails ends the stream
with `data: {"error": {...}}`, which the SDK raises as an `APIError`. A client that leaves (a
stream or a request waiting for its answer) cancels its job.

Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}` with the statuses the SDK
maps to its classes: 400 (Swell's 422), 401, 404 (`model_not_found`), 409, 413, 429 and 503 with
`retry-after` and `retry-after-ms` (which the SDK's retry loop honours), 500, and 504 when a
non-streamed answer is not ready within the gateway's `max_wait_seconds` (a retry with the same
`Idempotency-Key` waits on the same job). What cannot be honoured (`response_format` json_schema,
tools, logprobs, token-id prompts, image `url` answers) is refused with a 400 naming the parameter,
never ignored. A request the gateway's filter refuses (swell.gateway.filtering) is a 400 with code
`content_policy_violation`, as OpenAI answers one (the SDK raises `BadRequestError`).
"""

from __future__ import annotations

import abc
import asyncio
import base64
import json
import logging
import math
import re
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, TypeVar

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from swell.core.config import ServiceConfig, Settings
from swell.core.errors import (
    AuthError,
    Conflict,
    NotFound,
    QueueFull,
    Refused,
    ServiceNotFound,
    SwellError,
    Unavailable,
    ValidationError,
)
from swell.core.jobs import EventKind, Job, JobEvent, JobState
from swell.engines.results import ResultStore
from swell.gateway.auth import bearer_key
from swell.gateway.errors import shaped_route
from swell.gateway.events import HEADERS as SSE_HEADERS
from swell.gateway.events import is_final
from swell.gateway.metrics import WAITED
from swell.gateway.submissions import Submissions

log = logging.getLogger("swell.gateway")

MODEL_ENGINES = frozenset({"transformers", "embeddings", "http", "diffusers"})
SIZE = re.compile(r"^([0-9]{2,5})x([0-9]{2,5})$")
IMAGE_PARAMS = {"input.width": "size", "input.height": "size", "input.images": "n"}  # diffusers -> OpenAI
DISCONNECT_POLL = 0.25  # seconds between looks at whether a waiting or streaming client left
DONE = b"data: [DONE]\n\n"
FINISH_REASONS = frozenset({"stop", "length"})
# A job the engine refused as bad input, its error as the worker writes it (`Type: message`), the
# message starting with the field (swell.engines.transformers.engine `_max_tokens`).
ENGINE_REFUSAL = re.compile(r"^ValidationError: (?P<message>(?P<field>input\.[A-Za-z_]+): .*)$", re.DOTALL)

T = TypeVar("T")


# -- errors -----------------------------------------------------------------------------------------


class TimedOut(SwellError):
    """A non-streamed answer was not ready within `max_wait_seconds` (504; the job runs on)."""

    status_code = 504


def openai_error(error: SwellError) -> JSONResponse:
    """`error` as OpenAI answers it: its status (422 as 400), body and retry headers."""
    status = 400 if error.status_code == 422 or isinstance(error, Refused) else error.status_code
    kind, code = _kind(error, status)
    body = {"error": {"message": error.message, "type": kind, "param": _param(error.field), "code": code}}
    return JSONResponse(body, status_code=status, headers=_headers(error))


def _kind(error: SwellError, status: int) -> tuple[str, str | None]:
    """OpenAI's `type` and `code` for an error of Swell's tree."""
    if isinstance(error, AuthError):
        return "invalid_request_error", "invalid_api_key"
    if isinstance(error, ServiceNotFound):
        return "invalid_request_error", "model_not_found"
    if isinstance(error, Refused):
        return "invalid_request_error", "content_policy_violation"
    if isinstance(error, QueueFull):
        return "requests", "rate_limit_exceeded"
    if isinstance(error, Unavailable):
        return "server_error", "service_unavailable"
    if isinstance(error, TimedOut):
        return "server_error", "timeout"
    if isinstance(error, NotFound | Conflict) or status < 500:
        return "invalid_request_error", None
    return "server_error", None


def _param(field: str | None) -> str | None:
    """A Swell field as the OpenAI request names it: `service` is `model`, `input.X` is `X`."""
    if field is None:
        return None
    if field == "service":
        return "model"
    if field == "input.texts":
        return "input"
    return IMAGE_PARAMS.get(field) or field.removeprefix("input.")


def _headers(error: SwellError) -> dict[str, str]:
    if isinstance(error, AuthError):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(error, QueueFull | Unavailable):
        seconds = max(0.0, error.retry_after)
        return {"retry-after": str(max(1, math.ceil(seconds))), "retry-after-ms": str(round(seconds * 1000))}
    return {}


OpenAIRoute = shaped_route("OpenAIRoute", openai_error, field_in_message=True)
"""A route whose every refusal (auth, body validation, Swell's errors) is in OpenAI's shape."""


# -- requests -------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the SDKs send fields Swell has no use for (user, ...)


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: str = Field(max_length=32)
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=64)


class ResponseFormat(_Body):
    type: str


class StreamOptions(_Body):
    include_usage: bool = False


class Sampling(_Body):
    """What chat and completions share."""

    model: str = Field(max_length=200)
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None

    def sampling(self) -> dict[str, Any]:
        """The transformers engine's sampling fields that the request sets."""
        fields = {"n": self.n, "stop": self.stop, "seed": self.seed, "temperature": self.temperature}
        fields |= {"top_p": self.top_p}
        return {key: value for key, value in fields.items() if value is not None}


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None


class CompletionRequest(Sampling):
    prompt: str | list[str]
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None


class EmbeddingRequest(_Body):
    model: str = Field(max_length=200)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class ImageRequest(_Body):
    model: str = Field(max_length=200)
    prompt: str = Field(max_length=32_000)
    n: int | None = Field(None, ge=1, le=16)
    size: str | None = None
    response_format: str | None = None
    output_format: str | None = None


# -- the door ---------------------------------------------------------------------------------------


class OpenAIAPI:
    """The OpenAI routes over a `Submissions`."""

    def __init__(
        self,
        submissions: Submissions,
        services: list[ServiceConfig],
        max_wait: float,
        *,
        results: ResultStore | None = None,
    ) -> None:
        self.submissions = submissions
        self.services = services
        self.max_wait = max_wait
        self.results = results  # where image jobs' files are read back; None: no image generation

    def router(self, settings: Settings) -> APIRouter:
        auth = [Depends(bearer_key(settings.api_key))] if settings.auth else []
        router = APIRouter(prefix="/v1", dependencies=auth, tags=["openai"], route_class=OpenAIRoute)
        router.add_api_route("/models", self.list_models, methods=["GET"])
        router.add_api_route("/models/{model}", self.get_model, methods=["GET"])
        router.add_api_route("/chat/completions", self.chat, methods=["POST"], response_model=None)
        router.add_api_route("/completions", self.completions, methods=["POST"], response_model=None)
        router.add_api_route("/embeddings", self.embeddings, methods=["POST"])
        router.add_api_route("/images/generations", self.images, methods=["POST"])
        return router

    # -- routes -----------------------------------------------------------------------------------

    async def list_models(self) -> JSONResponse:
        """The services an OpenAI client can name as its model."""
        models = [_model(service) for service in self.services if _is_model(service)]
        return JSONResponse({"object": "list", "data": models})

    async def get_model(self, model: str) -> JSONResponse:
        for service in self.services:
            if service.name == model and _is_model(service):
                return JSONResponse(_model(service))
        raise ServiceNotFound(f"The model {model!r} does not exist", field="service")

    async def chat(
        self,
        body: ChatRequest,
        request: Request,
        idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=200),
    ) -> Response:
        """A chat completion, whole or streamed."""
        payload = self._translated(body.model, lambda: chat_input(body, self._service(body.model)))
        job, _ = await self._submit(body.model, payload, idempotency_key)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        shape = ChatShape(job, body.model, n=body.n or 1, include_usage=include_usage)
        return await self._answer(job, shape, bool(body.stream), request)

    async def completions(
        self,
        body: CompletionRequest,
        request: Request,
        idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=200),
    ) -> Response:
        """A text completion, whole or streamed."""
        payload = self._translated(body.model, lambda: completion_input(body))
        job, _ = await self._submit(body.model, payload, idempotency_key)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        shape = CompletionShape(job, body.model, n=body.n or 1, include_usage=include_usage)
        return await self._answer(job, shape, bool(body.stream), request)

    async def embeddings(
        self,
        body: EmbeddingRequest,
        request: Request,
        idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=200),
    ) -> JSONResponse:
        """Embeddings of `input`, as floats or base64 (little-endian float32)."""
        texts = self._translated(body.model, lambda: embedding_texts(body))
        job, _ = await self._submit(body.model, {"texts": texts}, idempotency_key)
        job = await self._finished(job, request)
        return JSONResponse(embedding_answer(job, body))

    async def images(
        self,
        body: ImageRequest,
        request: Request,
        idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=200),
    ) -> JSONResponse:
        """Images from `prompt` as base64 PNGs (`b64_json`), `n` of them of `size`."""
        payload = self._translated(body.model, lambda: image_input(body))
        job, _ = await self._submit(body.model, payload, idempotency_key)
        job = await self._finished(job, request)
        if self.results is None:
            raise Unavailable("this gateway reads no result files")
        images = await self.submissions.storage.run(_read_images, self.results, job)
        data = [{"b64_json": base64.b64encode(image).decode(), "revised_prompt": None} for image in images]
        return JSONResponse({"created": int(job.created_at), "data": data})

    # -- helpers ----------------------------------------------------------------------------------

    def _service(self, name: str) -> ServiceConfig:
        return self.submissions.service(name)

    def _translated(self, model: str, translate: Callable[[], T]) -> T:
        """`translate()`, a request's translation into a job input; a refusal is counted in
        `/metrics` like the submission service's own (reason `invalid`)."""
        try:
            return translate()
        except ValidationError:
            self.submissions.metrics.rejections.labels(model, "invalid").inc()
            raise

    async def _submit(self, model: str, payload: dict[str, Any], key: str | None) -> tuple[Job, bool]:
        return await self.submissions.submit(model, payload, idempotency_key=key, door="openai")

    async def _answer(self, job: Job, shape: Shape, stream: bool, request: Request) -> Response:
        if stream:
            body = self._stream(job, shape, request)
            return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
        return JSONResponse(shape.whole(await self._finished(job, request)))

    async def _finished(self, job: Job, request: Request) -> Job:
        """The job once final; 504 when it is not within `max_wait`, its cancel when the client left."""
        request.scope[WAITED] = True
        job = await self.submissions.finish(job, self.max_wait, request.is_disconnected, "OpenAI")
        if job.state.final:
            return _succeeded(job)
        raise TimedOut(
            f"job {job.id} is not finished after {self.max_wait:g} seconds; "
            "retry with the same Idempotency-Key to wait for it again"
        )

    async def _stream(self, job: Job, shape: Shape, request: Request) -> AsyncIterator[bytes]:
        """The job's answer as OpenAI chunks; the job is cancelled if the client leaves first."""
        watcher = asyncio.create_task(self._cancel_when_gone(job.id, request), name="openai-disconnect")
        finished = False
        try:
            for chunk in shape.opening():
                yield sse(chunk)
            async for event in self.submissions.watch(job.id):
                for chunk in await self._chunks(event, shape):
                    yield sse(chunk)
            finished = True
            if not shape.failed:
                yield DONE
        except SwellError as error:  # storage failed under the stream: say so, and give the job up
            log.error("streaming job %s failed: %s", job.id, error)
            yield sse(_error_event(f"the stream of job {job.id} failed: {error.message}"))
        finally:
            watcher.cancel()
            if not finished:
                self.submissions.abandon(job.id, "OpenAI")

    async def _chunks(self, event: JobEvent, shape: Shape) -> list[dict[str, Any]]:
        if event.kind == EventKind.DELTA.value:
            return shape.delta(str(event.data.get("text", "")), int(event.data.get("index", 0)))
        if is_final(event):
            return shape.closing(await self.submissions.storage.get(event.job_id))
        return []

    async def _cancel_when_gone(self, job_id: str, request: Request) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL)
        self.submissions.abandon(job_id, "OpenAI")


def _is_model(service: ServiceConfig) -> bool:
    if service.engine not in MODEL_ENGINES:
        return False
    return service.engine != "http" or service.options.get("mode") == "openai"


def _model(service: ServiceConfig) -> dict[str, Any]:
    return {"id": service.name, "object": "model", "created": 0, "owned_by": "swell"}


def _succeeded(job: Job) -> Job:
    """`job` if it succeeded; the error a failed, dead or cancelled job is answered with."""
    if job.state is JobState.SUCCEEDED:
        return job
    if job.state is JobState.CANCELLED:
        raise Conflict(f"job {job.id} was cancelled")
    refused = ENGINE_REFUSAL.match(job.error or "") if job.state is JobState.FAILED else None
    if refused is not None:  # the engine refused the input (input.max_tokens past the context, say)
        raise ValidationError(refused["message"], field=refused["field"])
    raise SwellError(f"job {job.id} {job.state.value}: {job.error or 'no reason given'}")


# -- requests into jobs -----------------------------------------------------------------------------


def chat_input(body: ChatRequest, service: ServiceConfig) -> dict[str, Any]:
    """A chat request as a transformers-shaped job input; refuses what cannot be honoured."""
    if body.response_format is not None and body.response_format.type not in ("text", "json_object"):
        raise ValidationError(
            f"response_format {body.response_format.type!r} is not supported: use 'json_object' "
            "(JSON mode: the text is one JSON object) or 'text'",
            field="response_format",
        )
    if body.tools or body.functions:
        raise ValidationError("tools and functions are not supported", field="tools")
    _no_logprobs(body)
    payload: dict[str, Any] = {"messages": [_message(m, i) for i, m in enumerate(body.messages)]}
    payload |= body.sampling()
    max_tokens = body.max_completion_tokens or body.max_tokens  # unset: the service's default_max_tokens
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    if body.response_format is not None and body.response_format.type == "json_object":
        payload["response_format"] = {"type": "json_object"}
    return payload


def _message(message: ChatMessage, index: int) -> dict[str, Any]:
    if isinstance(message.content, list):
        if any(part.type != "text" or part.text is None for part in message.content):
            raise ValidationError("only text content parts are supported", field=f"messages.{index}.content")
        content = "".join(part.text or "" for part in message.content)
    else:
        content = message.content or ""
    out: dict[str, Any] = {"role": message.role, "content": content}
    if message.name is not None:
        out["name"] = message.name
    return out


def completion_input(body: CompletionRequest) -> dict[str, Any]:
    """A completion request as a transformers-shaped job input (one prompt per request)."""
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise ValidationError("send one prompt per request", field="prompt")
        prompt = body.prompt[0]
    else:
        prompt = body.prompt
    if body.echo or (body.best_of is not None and body.best_of != (body.n or 1)) or body.suffix:
        raise ValidationError("echo, best_of and suffix are not supported", field="echo")
    _no_logprobs(body)
    payload: dict[str, Any] = {"prompt": prompt, **body.sampling()}
    if body.max_tokens is not None:
        payload["max_tokens"] = body.max_tokens
    return payload


def _no_logprobs(body: Sampling) -> None:
    if body.logprobs:
        raise ValidationError("logprobs are not supported", field="logprobs")


def embedding_texts(body: EmbeddingRequest) -> list[str]:
    """The texts to embed; token-id input is refused (Swell's engines take text)."""
    if isinstance(body.input, str):
        return [body.input]
    if all(isinstance(item, str) for item in body.input):
        return [str(item) for item in body.input]
    raise ValidationError("send text, not token ids", field="input")


def embedding_answer(job: Job, body: EmbeddingRequest) -> dict[str, Any]:
    """The finished job's vectors in OpenAI's list shape."""
    result = job.result or {}
    vectors: list[list[float]] = result.get("embeddings") or []
    if body.dimensions is not None and vectors and len(vectors[0]) != body.dimensions:
        raise ValidationError(
            f"this model's embeddings have {len(vectors[0])} dimensions, not {body.dimensions}",
            field="dimensions",
        )
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    tokens = int((result.get("usage") or {}).get("prompt_tokens", 0))
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def image_input(body: ImageRequest) -> dict[str, Any]:
    """An image request as a diffusers-shaped job input; refuses `url` answers (files here are
    behind the API key, so a URL would not open where OpenAI's do) and formats other than PNG."""
    if body.response_format not in (None, "b64_json"):
        raise ValidationError("only response_format 'b64_json' is supported", field="response_format")
    if body.output_format not in (None, "png"):
        raise ValidationError("only output_format 'png' is supported", field="output_format")
    payload: dict[str, Any] = {"prompt": body.prompt, "images": body.n or 1}
    if body.size not in (None, "auto"):
        match = SIZE.fullmatch(body.size or "")
        if match is None:
            raise ValidationError("size is WIDTHxHEIGHT, e.g. 512x512, or auto", field="size")
        payload |= {"width": int(match[1]), "height": int(match[2])}
    return payload


def _read_images(results: ResultStore, job: Job) -> list[bytes]:
    """The bytes of each image file a finished job wrote."""
    images = []
    for entry in (job.result or {}).get("images") or []:
        with results.open(job.id, str(entry["file"])) as file:
            images.append(file.read())
    return images


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# -- jobs into answers ------------------------------------------------------------------------------


def sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


class Shape(abc.ABC):
    """How one kind of answer (chat, completion) is written, whole or as chunks."""

    object_whole = ""
    object_chunk = ""
    id_prefix = ""

    def __init__(self, job: Job, model: str, *, n: int, include_usage: bool) -> None:
        self.job = job
        self.model = model
        self.n = n
        self.include_usage = include_usage
        self.streamed: dict[int, str] = {}  # each choice's text sent so far
        self.failed = False

    def whole(self, job: Job) -> dict[str, Any]:
        result = job.result or {}
        choices = [self.choice(c, i) for i, c in enumerate(result.get("choices") or [])]
        return {**self._head(self.object_whole), "choices": choices, "usage": _usage(result)}

    def opening(self) -> list[dict[str, Any]]:
        return []

    def delta(self, text: str, index: int = 0) -> list[dict[str, Any]]:
        if not text or not 0 <= index < self.n:
            return []
        self.streamed[index] = self.streamed.get(index, "") + text
        return [self.chunk([self.piece(index, text, None)])]

    def closing(self, job: Job) -> list[dict[str, Any]]:
        """The chunks after the last delta: the rest of each choice, finish reasons, usage; or the
        error event of a job that did not succeed."""
        if job.state is not JobState.SUCCEEDED:
            self.failed = True
            reason = "was cancelled" if job.state is JobState.CANCELLED else f"{job.state.value}: {job.error}"
            return [_error_event(f"job {job.id} {reason}")]
        result = job.result or {}
        chunks = [self.chunk([piece]) for piece in self._rest(result.get("choices") or [])]
        chunks += [
            self.chunk([self.piece(i, "", _finish(c))]) for i, c in enumerate(result.get("choices") or [])
        ]
        if self.include_usage:
            chunks.append({**self._head(self.object_chunk), "choices": [], "usage": _usage(result)})
        return chunks

    def _rest(self, choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
        pieces = []
        for index, choice in enumerate(choices):
            text = str(choice.get("text", ""))
            streamed = self.streamed.get(index, "")
            sent = streamed if text.startswith(streamed) else ""
            if text[len(sent) :]:
                pieces.append(self.piece(index, text[len(sent) :], None))
        return pieces

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk = {**self._head(self.object_chunk), "choices": choices}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _head(self, kind: str) -> dict[str, Any]:
        return {
            "id": f"{self.id_prefix}{self.job.id}",
            "object": kind,
            "created": int(self.job.created_at),
            "model": self.model,
            "system_fingerprint": None,
        }

    @abc.abstractmethod
    def choice(self, choice: dict[str, Any], index: int) -> dict[str, Any]:
        """One choice of the whole answer."""

    @abc.abstractmethod
    def piece(self, index: int, text: str, finish: str | None) -> dict[str, Any]:
        """One choice's part of a chunk."""


class ChatShape(Shape):
    object_whole = "chat.completion"
    object_chunk = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def opening(self) -> list[dict[str, Any]]:
        role = {"role": "assistant", "content": ""}
        return [self.chunk([{"index": i, "delta": role, "logprobs": None, "finish_reason": None}])
                for i in range(self.n)]  # fmt: skip

    def choice(self, choice: dict[str, Any], index: int) -> dict[str, Any]:
        message = {"role": "assistant", "content": str(choice.get("text", "")), "refusal": None}
        return {"index": index, "message": message, "logprobs": None, "finish_reason": _finish(choice)}

    def piece(self, index: int, text: str, finish: str | None) -> dict[str, Any]:
        delta = {"content": text} if text else {}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


class CompletionShape(Shape):
    object_whole = "text_completion"
    object_chunk = "text_completion"
    id_prefix = "cmpl-"

    def choice(self, choice: dict[str, Any], index: int) -> dict[str, Any]:
        return {"index": index, "text": str(choice.get("text", "")), "logprobs": None,
                "finish_reason": _finish(choice)}  # fmt: skip

    def piece(self, index: int, text: str, finish: str | None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def _error_event(message: str) -> dict[str, Any]:
    """The data of the event that ends a stream whose job did not succeed (the SDK raises it)."""
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


def _finish(choice: dict[str, Any]) -> str:
    reason = choice.get("finish_reason")
    return reason if reason in FINISH_REASONS else "stop"


def _usage(result: dict[str, Any]) -> dict[str, int]:
    usage = result.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


__all__ = ["OpenAIAPI", "OpenAIRoute", "openai_error"]
