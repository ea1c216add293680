"""The openai mode: completions, chat completions and embeddings on an OpenAI-compatible server.

A text job is one streamed request (`stream: true`, usage asked for with `stream_options`) to
`/v1/completions` (a prompt) or `/v1/chat/completions` (messages, rendered by the server's chat
template). Server-sent events are read as they come: each completion's text goes into
`context.delta` piece by piece with its index (as the transformers engine streams a job's `n`
completions), progress is the pieces over `max_tokens` times `n`, and the result has the
transformers engine's shape (`choices` with `index`, `text`, `finish_reason`; `usage`; `model`;
`seed`). A cancel closes the stream, which tells the server to stop (vLLM aborts a request whose
client went away). `texts` go to `/v1/embeddings` and come back in the embeddings engine's shape.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from swell.core.errors import EngineError
from swell.engines.base import RunContext
from swell.engines.http.spec import OpenAIInput
from swell.engines.http.wire import raise_for_status


def completion_body(job: OpenAIInput, model: str | None) -> tuple[str, dict[str, Any]]:
    """The path and JSON of a streamed completion (or chat completion) for `job`."""
    body: dict[str, Any] = {
        "max_tokens": job.max_tokens,
        "temperature": job.temperature,
        "top_p": job.top_p,
        "n": job.n,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if model is not None:
        body["model"] = model
    for key, value in (("stop", job.stop), ("seed", job.seed), ("top_k", job.top_k or None)):
        if value is not None:
            body[key] = value
    if job.messages is not None:
        body["messages"] = [message.model_dump(exclude_none=True) for message in job.messages]
        return "/v1/chat/completions", body
    body["prompt"] = job.prompt
    return "/v1/completions", body


async def sse_data(response: httpx.Response) -> AsyncIterator[Any]:
    """The JSON of each `data:` event of a server-sent event stream, until `[DONE]` or its end."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments, `event:` and `id:` lines
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except ValueError:
            raise EngineError(f"the server streamed an event that is not JSON: {data[:200]!r}") from None


@dataclass
class Completion:
    """One job's completions as their pieces arrive."""

    job_id: str
    job: OpenAIInput
    context: RunContext
    texts: dict[int, list[str]] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)
    pieces: int = 0
    percent: int = 0
    usage: dict[str, Any] | None = None
    model: str | None = None

    def take(self, chunk: Any) -> None:
        """Fold in one streamed chunk: its text pieces, finish reasons, usage and model."""
        if not isinstance(chunk, dict):
            raise EngineError("the server streamed an event that is not a JSON object")
        if isinstance(chunk.get("error"), dict):
            raise EngineError(f"the server failed mid-stream: {chunk['error'].get('message')}")
        self.model = chunk.get("model") or self.model
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            self._choice(choice)

    def _choice(self, choice: Any) -> None:
        index = choice.get("index", 0) if isinstance(choice, dict) else None
        if not isinstance(index, int) or not 0 <= index < self.job.n:
            raise EngineError(f"the server streamed a choice with a bad index: {choice!r:.200}")
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str) and text:
            self.texts.setdefault(index, []).append(text)
            self.pieces += 1
            self.context.delta(self.job_id, text, index=index)
            self._progress()
        if choice.get("finish_reason"):
            self.finish[index] = str(choice["finish_reason"])

    def _progress(self) -> None:
        percent = min(99, self.pieces * 100 // (self.job.max_tokens * self.job.n))
        if percent > self.percent:
            self.percent = percent
            self.context.progress(self.job_id, percent / 100)

    def result(self, requested: str | None) -> dict[str, Any]:
        """The transformers engine's result shape; token counts from the server's usage, or (a server
        that sends none) the streamed pieces, with no prompt count."""
        choices = [
            {
                "index": i,
                "text": "".join(self.texts.get(i, [])),
                "finish_reason": self.finish.get(i, "length"),
            }
            for i in range(self.job.n)
        ]
        usage = self.usage or {"prompt_tokens": None, "completion_tokens": self.pieces, "total_tokens": None}
        return {"choices": choices, "usage": usage, "model": self.model or requested, "seed": self.job.seed}


async def complete(
    client: httpx.AsyncClient, job_id: str, job: OpenAIInput, model: str | None, context: RunContext
) -> dict[str, Any]:
    """Stream one completion job to its end (the caller cancels the task on a cancel, which closes
    the stream)."""
    path, body = completion_body(job, model)
    completion = Completion(job_id, job, context)
    async with client.stream("POST", path, json=body) as response:
        if not response.is_success:
            await response.aread()
            raise_for_status(response)
        async for chunk in sse_data(response):
            completion.take(chunk)
    return completion.result(model)


async def embed(client: httpx.AsyncClient, job: OpenAIInput, model: str | None) -> dict[str, Any]:
    """Embed the job's texts: the embeddings engine's result shape, vectors in the texts' order."""
    body: dict[str, Any] = {"input": job.texts}
    if model is not None:
        body["model"] = model
    response = await client.post("/v1/embeddings", json=body)
    raise_for_status(response)
    try:
        data = response.json()
        rows = sorted(data["data"], key=lambda row: row["index"])
        vectors = [[float(x) for x in row["embedding"]] for row in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineError(
            f"the server's embeddings answer is malformed ({type(exc).__name__}: {exc})"
        ) from None
    if len(vectors) != len(job.texts or ()):
        raise EngineError(f"the server returned {len(vectors)} embeddings for {len(job.texts or ())} texts")
    result: dict[str, Any] = {"embeddings": vectors, "model": data.get("model") or model}
    result["dimensions"] = len(vectors[0]) if vectors else 0
    if isinstance(data.get("usage"), dict):
        result["usage"] = data["usage"]
    return result


async def served_models(client: httpx.AsyncClient) -> list[str]:
    """The model ids `/v1/models` lists (the default model when the options name none)."""
    response = await client.get("/v1/models")
    raise_for_status(response)
    try:
        return [str(row["id"]) for row in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise EngineError("the server's /v1/models answer is malformed") from None
