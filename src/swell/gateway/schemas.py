"""The request bodies of the `/v1` API, validated by pydantic before any handler runs."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from swell.core.jobs import Priority


def _encodable(text: str) -> str:
    """Refuse lone surrogates (valid in JSON escapes, not in UTF-8, so neither storable nor echoable)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class SubmitRequest(BaseModel):
    """`POST /v1/jobs`."""

    model_config = ConfigDict(extra="forbid")

    service: Text = Field(max_length=200, description="The service that runs the job")
    input: dict[str, Any] = Field(description="The engine's input, a JSON object")
    priority: Priority = Field(
        Priority.NORMAL,
        description=(
            "high, normal or low (aged: never starved), or batch (runs only on capacity interactive "
            "work leaves idle, and is handed back when it needs it)"
        ),
    )
    idempotency_key: Text | None = Field(
        None, min_length=1, max_length=200, description="A repeat with the same key returns the same job"
    )
    callback_url: Text | None = Field(
        None, max_length=2048, description="Receives a signed POST when the job reaches a final state"
    )
    wait: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="Seconds to wait for the result before answering"
    )
    tenant: Text | None = Field(None, max_length=200)
    model: Text | None = Field(None, max_length=200, description="The checkpoint the job needs")

    @field_validator("input")
    @classmethod
    def _json_storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The input is stored and echoed as strict JSON: no NaN/Infinity, no lone surrogates."""
        try:
            json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"must be strict JSON ({exc})") from None
        return value


class WebhookView(BaseModel):
    state: str = Field(description="waiting, pending, delivered, failed or expired")
    attempts: int
    error: str | None


class DeliveryView(WebhookView):
    channel: str = Field(description="webhook, discord, ...")


class ProgressView(BaseModel):
    fraction: float = Field(description="Done so far, 0..1, as the worker last reported")
    message: str | None = None


class JobView(BaseModel):
    """A job as the API shows it (`Job.to_public()`); optional keys appear only when set."""

    id: str
    service: str
    state: str = Field(description="queued, leased, succeeded, failed, dead or cancelled")
    priority: str
    attempts: int = Field(description="Deliveries to a worker so far")
    max_attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    result: dict[str, Any] | None = None
    error: str | None = None
    tenant: str | None = None
    model: str | None = None
    idempotency_key: str | None = None
    callback_url: str | None = None
    webhook: WebhookView | None = Field(None, description="The webhook of `callback_url` (one job's answer)")
    deliveries: list[DeliveryView] | None = Field(None, description="Its outbox rows (one job's answer)")
    progress: ProgressView | None = Field(None, description="While it runs (and after, as last reported)")
    cancel_requested: bool | None = Field(None, description="A cancel was asked while a worker held it")


class JobList(BaseModel):
    jobs: list[JobView] = Field(description="Newest first; `result` only with `include=result`")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last")


class CancelledView(BaseModel):
    cancelled: int = Field(description="How many queued jobs were cancelled")


class StatusView(BaseModel):
    status: str = Field(description="ok (/healthz) or ready (/readyz)")


class NotReadyView(BaseModel):
    error: str = Field(description="Unavailable")
    message: str
    status: str = Field(description="failing (/healthz) or not ready (/readyz)")
    reasons: list[str]


class ErrorView(BaseModel):
    error: str = Field(description="The error's type, e.g. ValidationError, QueueFull")
    message: str
    field: str | None = Field(None, description="The offending field, as a dotted path")
