"""The `http` engine described without importing it: options, a job's input per mode, its work.

A service fronts one server at `url`: `mode: a1111` (an AUTOMATIC1111/Forge web UI started with
`--api`) or `mode: openai` (any OpenAI-compatible server, vLLM, llama.cpp's server, TGI's). With
`command`, the worker starts that server itself, waits until `ready_url` answers, restarts it when it
dies, and stops it on unload; such a server must listen on loopback, since it runs beside the worker.

A job's input is checked against the mode's model at submit (`check`, which knows the options): the
a1111 mode takes the `diffusers` engine's fields (prompt, steps, sampler by its A1111 name, seed,
size, images, init image, LoRAs) and `native`, fields sent to A1111 as they are; the openai mode
takes the `transformers` engine's fields (a prompt or chat messages, sampling), or `texts` for
embeddings. Either may name its `model` (an A1111 checkpoint, a served model name). This module
imports pydantic and Swell's light modules only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import pydantic
from pydantic import Field, StringConstraints, field_validator, model_validator

from swell.engines.spec import EngineSpec, Input, Options, pydantic_problem
from swell.engines.transformers.spec import MAX_N, MAX_SEED, MAX_STOPS, Message, StopString

MAX_PROMPT_CHARS = 1_000_000
MAX_SIDE, MAX_IMAGES, MAX_STEPS = 4096, 64, 500
MAX_TEXTS, MAX_TEXT_CHARS = 2048, 100_000
MAX_NATIVE_KEYS = 64
LORA_NAME = r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$"
MODEL_NAME = r"^[^\x00-\x1f<>]{1,256}$"  # a checkpoint title or served model name: no control chars
DEFAULT_READY = {"a1111": "/sdapi/v1/progress?skip_current_image=true", "openai": "/v1/models"}
DEFAULT_MAX_TOKENS = 16
DEFAULT_STEPS = 20  # A1111's default
TEXT_FIELDS = frozenset({"messages", "max_tokens", "temperature", "top_p", "top_k", "stop", "n"})

ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME)]


def server_url(url: str, *, what: str = "url") -> str:
    """`url` if it is an http(s) URL with a host and no credentials, query or fragment; without its
    trailing slash. ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http:// or https:// URL with a host, not {url!r}")
    if parts.username or parts.password:
        raise ValueError(f"{what} must not carry credentials (use 'api_key_env')")
    if parts.fragment or (parts.query and what == "url"):
        raise ValueError(f"{what} must not have a query or fragment")
    try:
        parts.port  # noqa: B018  # a port that is not a number raises here
    except ValueError:
        raise ValueError(f"{what} has a bad port: {url!r}") from None
    return url.rstrip("/")


def is_loopback(url: str) -> bool:
    """Whether `url`'s host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpOptions(Options):
    """A service fronting one server (swell.yaml `services[x].options`)."""

    mode: Literal["a1111", "openai"]
    url: str  # the server's base URL: http://127.0.0.1:7860 (a1111), http://127.0.0.1:8000 (openai)
    model: ModelName | None = None  # the default checkpoint (a1111) or served model name (openai)
    api_key_env: Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")] | None = None
    command: list[Annotated[str, StringConstraints(min_length=1)]] | None = Field(default=None, min_length=1)
    cwd: str | None = None  # the started server's working directory
    ready_url: str | None = None  # default: url + /sdapi/v1/progress (a1111) or /v1/models (openai)
    ready_timeout: float = Field(default=600.0, gt=0, le=86_400)  # seconds for a start to answer
    restart: bool = True  # start the server again when it dies (with back-off)
    restart_backoff: float = Field(default=1.0, gt=0, le=600)  # the first wait; doubles per death
    restart_backoff_max: float = Field(default=60.0, gt=0, le=3600)
    stop_timeout: float = Field(default=20.0, gt=0, le=600)  # SIGTERM, then SIGKILL after this
    timeout: float = Field(default=600.0, gt=0, le=86_400)  # seconds one job may take on the server
    concurrency: int = Field(default=8, ge=1, le=256)  # openai: jobs streamed at once per call
    progress_every: float = Field(default=0.5, gt=0, le=60)  # a1111: seconds between progress polls
    previews: bool = False  # a1111: forward the live preview image with the progress

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return server_url(url)

    @field_validator("ready_url")
    @classmethod
    def _ready_url(cls, url: str | None) -> str | None:
        return None if url is None else server_url(url, what="ready_url")

    @model_validator(mode="after")
    def _managed(self) -> HttpOptions:
        if self.command is not None and not is_loopback(self.url):
            raise ValueError("with 'command', 'url' must be a loopback address (the server runs here)")
        if self.ready_url is not None and self.command is None:
            raise ValueError("'ready_url' needs 'command' (it is how a started server is known ready)")
        if self.restart_backoff > self.restart_backoff_max:
            raise ValueError("'restart_backoff' must not exceed 'restart_backoff_max'")
        return self

    def readiness_url(self) -> str:
        """The URL that answers 2xx once the server is ready."""
        return self.ready_url or self.url + DEFAULT_READY[self.mode]


class Lora(Input):
    name: Annotated[str, StringConstraints(pattern=LORA_NAME)]
    weight: Annotated[float, Field(ge=-4, le=4)] = 1.0


class A1111Input(Input):
    """One image job for an A1111 server, in the `diffusers` engine's terms (see docs/engines.md)."""

    model: ModelName | None = None  # the checkpoint (override_settings.sd_model_checkpoint)
    prompt: Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS)] = ""
    negative_prompt: Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS)] = ""
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    guidance: Annotated[float, Field(ge=0, le=100)] | None = None
    sampler: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    schedule: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    seed: Annotated[int, Field(ge=-1, le=2**32 - 1)] | None = None
    width: Annotated[int, Field(ge=64, le=MAX_SIDE, multiple_of=8)] | None = None
    height: Annotated[int, Field(ge=64, le=MAX_SIDE, multiple_of=8)] | None = None
    images: Annotated[int, Field(ge=1, le=MAX_IMAGES)] = 1
    init_image: str | None = None  # base64 or data: URL; image-to-image
    strength: Annotated[float, Field(gt=0, le=1)] | None = None
    loras: list[Lora] = Field(default_factory=list, max_length=16)
    native: dict[str, Any] = Field(default_factory=dict, max_length=MAX_NATIVE_KEYS)

    @model_validator(mode="after")
    def _consistent(self) -> A1111Input:
        if self.strength is not None and self.init_image is None:
            raise ValueError("'strength' needs 'init_image'")
        reserved = {"override_settings", "init_images", "send_images", "save_images"} & set(self.native)
        if reserved:
            raise ValueError(f"'native' may not set {', '.join(sorted(reserved))} (Swell sets them)")
        return self


class OpenAIInput(Input):
    """One job for an OpenAI-compatible server, in the `transformers` engine's terms; or `texts` to
    embed."""

    model: ModelName | None = None
    prompt: Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS)] | None = None
    messages: list[Message] | None = Field(default=None, min_length=1, max_length=1024)
    texts: list[Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]] | None = Field(
        default=None, min_length=1, max_length=MAX_TEXTS
    )
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=1_000_000)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)  # 0: off (sent only when set; vLLM's extension)
    stop: list[StopString] | None = Field(default=None, max_length=MAX_STOPS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    n: int = Field(default=1, ge=1, le=MAX_N)

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, stop: object) -> object:
        return [stop] if isinstance(stop, str) else stop

    @model_validator(mode="after")
    def _one_kind(self) -> OpenAIInput:
        given = [name for name in ("prompt", "messages", "texts") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'prompt', 'messages' or 'texts'")
        return self

    def kind(self) -> str:
        """completions, chat or embeddings: the endpoint the job goes to."""
        if self.texts is not None:
            return "embeddings"
        return "chat" if self.messages is not None else "completions"


class HttpInput(Input):
    """Any JSON object at parse time: which model applies depends on the service's mode, so the
    strict check is `check` (the gateway runs it at submit with the options)."""

    model_config = pydantic.ConfigDict(extra="allow", frozen=True)


MODES: dict[str, type[A1111Input] | type[OpenAIInput]] = {"a1111": A1111Input, "openai": OpenAIInput}


def parse_job(payload: Mapping[str, Any], mode: str) -> A1111Input | OpenAIInput:
    """One job's input as the mode's model; a ValidationError naming `input.FIELD`."""
    model = MODES[mode]
    try:
        return model.model_validate(dict(payload))
    except pydantic.ValidationError as exc:
        raise pydantic_problem(exc.errors()[0], model, "input", "http").invalid() from None


def check(job: HttpInput, options: HttpOptions) -> None:
    """The submit-time check: the input against its mode's model."""
    payload = job.model_dump()
    parse_job(payload, options.mode)


def units(payload: Mapping[str, Any]) -> dict[str, float]:
    """Texts to embed, tokens it may generate over its completions (a job with any of the LLM
    fields), or steps x images (any other job: an image job, or a bare prompt, counted as one image of
    20 steps). The mode is not known here, so the fields tell."""
    if isinstance(payload.get("texts"), list):
        return {"texts": float(len(payload["texts"]) or 1)}
    if TEXT_FIELDS & set(payload):
        tokens, n = payload.get("max_tokens"), payload.get("n")
        count = tokens if isinstance(tokens, int) else DEFAULT_MAX_TOKENS
        return {"tokens": float(count * (n if isinstance(n, int) else 1))}
    steps, images = payload.get("steps"), payload.get("images")
    return {
        "steps": float(steps if isinstance(steps, int) else DEFAULT_STEPS),
        "images": float(images if isinstance(images, int) else 1),
    }


def batches(options: HttpOptions) -> bool:
    """An OpenAI-compatible server batches concurrent requests itself; an A1111 server runs one."""
    return options.mode == "openai"


SPEC = EngineSpec(
    name="http",
    factory="swell.engines.http.engine:HttpEngine",
    Options=HttpOptions,
    Input=HttpInput,
    batches=batches,
    units=units,
    extra=None,
    check=check,
    description="fronts an AUTOMATIC1111/Forge (--api) or OpenAI-compatible server, optionally started here",
)
