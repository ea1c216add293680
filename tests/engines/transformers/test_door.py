"""The OpenAI door's side of the transformers engine's JSON mode, per-choice streaming and context
refusals: the translation functions alone, then JSON mode through the official SDK against the tiny
LM in a real worker (the gateway tests' server)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from swell.core.config import ServiceConfig
from swell.core.errors import ValidationError
from swell.core.jobs import Job, JobSpec, JobState
from swell.gateway.openai import ChatRequest, ChatShape, _succeeded, chat_input

pytest.importorskip("openai")

from tests.gateway.test_openai import Server, server  # noqa: F401  (the gateway tests' server fixture)

SERVICE = ServiceConfig(name="llm", engine="transformers", options={"path": "m"})


def chat(**fields: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "llm", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_json_object_passes_through_and_json_schema_is_refused() -> None:
    payload = chat_input(chat(response_format={"type": "json_object"}), SERVICE)
    assert payload["response_format"] == {"type": "json_object"}
    assert "max_tokens" not in payload  # unset: the service's default_max_tokens, cut to the context
    assert "response_format" not in chat_input(chat(response_format={"type": "text"}), SERVICE)
    with pytest.raises(ValidationError) as refused:
        chat_input(chat(response_format={"type": "json_schema"}), SERVICE)
    assert refused.value.field == "response_format"


def test_deltas_stream_into_the_choice_they_carry() -> None:
    shape = ChatShape(_job(), "llm", n=2, include_usage=False)
    first, second = shape.delta("ab", 1), shape.delta("c", 0)
    assert first[0]["choices"][0]["index"] == 1 and first[0]["choices"][0]["delta"] == {"content": "ab"}
    assert second[0]["choices"][0]["index"] == 0
    assert shape.delta("x", 2) == []  # no such choice
    rest = shape._rest([{"text": "cd"}, {"text": "abe"}])
    assert [(p["index"], p["delta"]["content"]) for p in rest] == [(0, "d"), (1, "e")]


def test_an_engine_refusal_of_the_input_is_a_validation_error_naming_the_field() -> None:
    failed = _job(state=JobState.FAILED, error="ValidationError: input.max_tokens: 900 tokens ... at most 12")
    with pytest.raises(ValidationError) as refused:
        _succeeded(failed)
    assert refused.value.field == "input.max_tokens" and refused.value.message.startswith("input.max_tokens")


def _job(state: JobState = JobState.SUCCEEDED, error: str | None = None) -> Job:
    from dataclasses import replace

    from swell.queue.memory import MemoryQueue

    queue = MemoryQueue()
    job, _ = queue.submit(JobSpec("llm", {}))
    return replace(job, state=state, error=error)


def test_json_mode_through_the_sdk(server: Server) -> None:  # noqa: F811
    client = server.client()
    for seed in range(3):
        answer = client.chat.completions.create(
            model="llm",
            messages=[{"role": "user", "content": "a JSON object, please"}],
            response_format={"type": "json_object"},
            max_tokens=40,
            seed=seed,
        )
        assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
        assert answer.choices[0].finish_reason == "stop"
