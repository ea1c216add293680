"""The `transformers` engine described without importing it: options, a job's input, its work.

A service runs one causal LM from a local transformers folder (`path`) or a dataset of swell.yaml
(`dataset`). A job gives a `prompt` or chat `messages` (rendered through the model's chat template),
and sampling parameters in OpenAI's terms: `max_tokens`, `temperature` (0: greedy), `top_p`,
`top_k` (0: off), `stop` strings, `seed`, `n` completions and `response_format` (`json_object`:
JSON mode). A job that sets no `max_tokens` gets the service's `default_max_tokens`, cut to what the
model's context leaves after the prompt; one that sets more than the context leaves is refused
(naming `input.max_tokens`), since only the worker's tokenizer can count the prompt. This module
imports pydantic and Swell's light modules only: swell.yaml checks and the gateway import it; the
engine itself (swell.engines.transformers.engine) is imported in the worker.

Every job may share a call with any other (each sequence is sampled with its own parameters and
seed), but a call pads every prompt to the longest, so `batch_key` keeps prompts of very different
lengths apart: one bucket below 1,024 characters, then one per factor of four.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from swell.core.errors import ValidationError
from swell.engines.spec import EngineSpec, Input, Options, device_option

MAX_PROMPT_CHARS = 1_000_000
MAX_MESSAGES = 1024
MAX_STOPS = 16
MAX_STOP_CHARS = 256
MAX_N = 64
MAX_SEED = 2**63 - 1
DEFAULT_MAX_TOKENS = 16
BUCKET_CHARS_BITS = 9  # prompts under 2**10 characters share bucket 0; then one bucket per factor 4


class TransformersOptions(Options):
    """A service's model and limits (swell.yaml `services[x].options`)."""

    path: str | None = None  # a local transformers folder (config.json, safetensors weights, tokenizer)
    dataset: str | None = None  # or a key of swell.yaml's `datasets`, fetched through the node cache
    device: str | None = None  # cpu, cuda, cuda:N, mps or xpu; default: where the worker was placed
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: bf16/fp16 on GPU, fp32 on CPU
    max_batch_rows: int = Field(default=16, ge=1, le=1024)  # sequences (jobs x n) per generate call
    max_tokens: int = Field(default=4096, ge=1, le=1_000_000)  # the most a job may ask for
    default_max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=1_000_000)  # when a job sets none

    @field_validator("device")
    @classmethod
    def _device(cls, device: str | None) -> str | None:
        return device_option(device)

    @model_validator(mode="after")
    def _one_source(self) -> TransformersOptions:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of 'path' (a local transformers folder) or 'dataset'")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens may not exceed max_tokens ({self.max_tokens})")
        return self


class Message(Input):
    """One chat message as the chat template sees it."""

    role: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,31}$")]
    content: Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS)]
    name: Annotated[str, StringConstraints(max_length=64)] | None = None


class ResponseFormat(Input):
    """OpenAI's `response_format`: `text` (anything) or `json_object` (the text is one JSON object)."""

    type: Literal["text", "json_object"]


StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]


class TransformersInput(Input):
    """One job: a `prompt` or `messages` (not both) and how to sample its completions."""

    prompt: Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS)] | None = None
    messages: list[Message] | None = Field(default=None, min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)  # None: the service's default
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # 0: greedy
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)  # 0: no top-k cut
    stop: list[StopString] | None = Field(
        default=None, max_length=MAX_STOPS
    )  # one string alone: a list of one
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)  # None: drawn, and reported
    n: int = Field(default=1, ge=1, le=MAX_N)
    response_format: ResponseFormat | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, stop: object) -> object:
        return [stop] if isinstance(stop, str) else stop

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TransformersInput:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self

    def stops(self) -> tuple[str, ...]:
        """The stop strings, as a tuple."""
        return tuple(self.stop or ())

    @property
    def json_mode(self) -> bool:
        """Whether the text must be one JSON object (JSON mode)."""
        return self.response_format is not None and self.response_format.type == "json_object"


def check(job: TransformersInput, options: TransformersOptions) -> None:
    """The submit-time cross-check of a job against its service: the token cap, and a job's
    sequences must fit one call."""
    if job.max_tokens is not None and job.max_tokens > options.max_tokens:
        raise ValidationError(f"at most {options.max_tokens} for this service", field="input.max_tokens")
    if job.n > options.max_batch_rows:
        raise ValidationError(f"at most {options.max_batch_rows} for this service", field="input.n")


def units(payload: Mapping[str, Any]) -> dict[str, float]:
    """A job's work: the tokens it may generate, over all its completions."""
    max_tokens = payload.get("max_tokens", DEFAULT_MAX_TOKENS)
    n = payload.get("n", 1)
    tokens = (
        max_tokens if isinstance(max_tokens, int) else DEFAULT_MAX_TOKENS
    )  # the service's is unknown here
    return {"tokens": float(tokens * (n if isinstance(n, int) else 1))}


def prompt_chars(payload: Mapping[str, Any]) -> int:
    """The characters of a job's prompt, or of all its messages' contents."""
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return len(prompt)
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(len(m.get("content") or "") for m in messages if isinstance(m, dict))


def batch_key(payload: Mapping[str, Any]) -> int:
    """The prompt-length bucket of a job: jobs of one bucket may share a generate call."""
    return max(0, (prompt_chars(payload).bit_length() - BUCKET_CHARS_BITS) // 2)


SPEC = EngineSpec(
    name="transformers",
    factory="swell.engines.transformers.engine:TransformersEngine",
    Options=TransformersOptions,
    Input=TransformersInput,
    batches=True,
    units=units,
    extra="transformers",
    batch_key=batch_key,
    check=check,
    description="a causal LM; jobs batched into one generate, each sequence streamed on its own",
)
