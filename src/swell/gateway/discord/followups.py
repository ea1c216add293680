"""Follow-ups: the outbox's `discord` channel, editing each command's deferred response.

The dispatcher (swell.gateway.outbox) calls, for a job submitted through the door:

- `progress` while the job runs: "Working… 40 %" in the original response, at most once per
  `progress_every` seconds per message and never while Discord's rate limit has the route closed
  (an edit skipped is not owed: the next one shows the newer state). Best effort: a failed progress
  edit is logged and dropped, never retried.
- `deliver` once the job is final: PATCH `@original` with the result. Images (a result's
  `images[].file`, read from the result store) go as `files[n]` with their `attachments` in
  `payload_json`; text (an LLM's first choice, or a `text` field) as `content` up to 2,000
  characters and as `result.txt` beyond; anything else as JSON. A failed, dead or cancelled job gets
  a message that says so and why.
- `expire` shortly before the interaction token's 15 minutes run out with the job unfinished: the
  user is told it will not be answered here (the job itself runs on; `swell job ID` finds it).

Errors are the dispatcher's to schedule: a 429 (or a route closed by Discord's headers) is
`DeliveryFailed(retry_after=...)`, which the dispatcher waits out without spending an attempt, so
no follow-up is lost to rate limits; a 5xx or a transport failure is retryable; any other 4xx is
permanent (the token is gone or the message was refused; retrying cannot help). Every message
disables mentions: a prompt cannot ping @everyone.

A follow-up also ends the job's hold on its user's concurrency cap (`on_answered`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from swell.core.errors import NotFound, SwellError
from swell.core.jobs import Job, JobState
from swell.engines.results import ResultStore
from swell.gateway.discord.api import Attachment, DiscordAPI, DiscordError, RateLimited
from swell.gateway.discord.mapping import MAX_CONTENT, clip
from swell.gateway.outbox import DeliveryFailed

log = logging.getLogger("swell.gateway.discord")

CHANNEL = "discord"
MAX_FILES = 10  # attachments per message
MAX_FILE_BYTES = 10 * 1024 * 1024  # Discord's upload limit for a bot without boosts
NO_MENTIONS: dict[str, list[str]] = {"parse": []}  # a prompt cannot ping anyone
TEXT_FILE = "result.txt"


class Addressed(Protocol):
    """What the channel reads of an outbox delivery row (swell.core.jobs.Delivery)."""

    @property
    def job_id(self) -> str: ...

    @property
    def target(self) -> Mapping[str, Any]: ...


class DiscordChannel:
    """The outbox channel `discord` (see the module docstring)."""

    name = CHANNEL
    wants_progress = True

    def __init__(
        self,
        api: DiscordAPI,
        results: ResultStore,
        *,
        progress_every: float = 3.0,
        on_answered: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.results = results
        self.progress_every = progress_every
        self.on_answered = on_answered
        self.clock = clock
        self._shown: dict[str, tuple[float, str]] = {}  # job id -> (when, content) of its last edit

    async def deliver(self, delivery: Addressed, job: Job) -> None:
        """Edit the original response into the job's outcome."""
        payload, files = await asyncio.to_thread(final_message, job, self.results)
        await self._edit(delivery, payload, files)
        self._answered(job.id)

    async def progress(self, delivery: Addressed, job: Job) -> None:
        """Show how far the job is, when the last edit is old enough and the route is open."""
        content = progress_text(job)
        now = self.clock()
        last = self._shown.get(job.id)
        if last is not None and (now - last[0] < self.progress_every or last[1] == content):
            return
        if self.api.limits.wait(_route(delivery), now) > 0:
            return
        self._shown[job.id] = (now, content)
        try:
            await self._edit(delivery, {"content": content, "allowed_mentions": NO_MENTIONS}, [])
        except DeliveryFailed as exc:
            log.warning("a progress edit for job %s was dropped: %s", job.id, exc)

    async def expire(self, delivery: Addressed, job: Job) -> None:
        """Tell the user the job outlives the interaction token."""
        await self._edit(delivery, {"content": expiry_text(job), "allowed_mentions": NO_MENTIONS}, [])
        self._answered(job.id)

    async def _edit(self, delivery: Addressed, payload: dict[str, Any], files: list[Attachment]) -> None:
        target = delivery.target
        try:
            await self.api.edit_original(str(target["application_id"]), str(target["token"]), payload, files)
        except RateLimited as exc:
            raise DeliveryFailed(str(exc), retry_after=exc.retry_after) from None
        except DiscordError as exc:
            raise DeliveryFailed(str(exc), permanent=not exc.retryable) from None

    def _answered(self, job_id: str) -> None:
        self._shown.pop(job_id, None)
        if self.on_answered is not None:
            self.on_answered(job_id)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """Held open by the dispatcher while it runs: the API's connection pool opens with it (its
        TLS context takes a while to build: not in the first follow-up's time) and closes with it."""
        self.api.client()
        try:
            yield
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self.api.aclose()

    def __repr__(self) -> str:
        return f"DiscordChannel({self.api!r}, following={len(self._shown)})"


def _route(delivery: Addressed) -> str:
    target = delivery.target
    return f"PATCH /webhooks/{target['application_id']}/{target['token']}/messages/@original"


# -- messages (pure, but for reading result files) ---------------------------------------------------


def progress_text(job: Job) -> str:
    if job.state is JobState.QUEUED:
        return "⏳ Queued…"
    percent = f" {round(100 * job.progress)} %" if job.progress is not None else ""
    note = f" ({clip(job.progress_message, 200)})" if job.progress_message else ""
    return f"⏳ Working…{percent}{note}"


def expiry_text(job: Job) -> str:
    return (
        f"⌛ Job `{job.id}` is still {job.state.value} after the 15 minutes Discord gives a bot to "
        "answer; its result will not be posted here."
    )


def final_message(job: Job, results: ResultStore) -> tuple[dict[str, Any], list[Attachment]]:
    """The edit that answers a final job: its payload and its attachments."""
    if job.state is not JobState.SUCCEEDED:
        return {"content": clip(failure_text(job)), "allowed_mentions": NO_MENTIONS}, []
    result = job.result or {}
    images = [item["file"] for item in result.get("images", []) if isinstance(item, dict) and "file" in item]
    if images:
        return image_message(job, images, results)
    return text_message(result_text(result))


def failure_text(job: Job) -> str:
    if job.state is JobState.CANCELLED:
        return f"🚫 Job `{job.id}` was cancelled."
    reason = f": {job.error}" if job.error else ""
    return f"❌ Job `{job.id}` failed{reason}"


def image_message(
    job: Job, names: list[str], results: ResultStore
) -> tuple[dict[str, Any], list[Attachment]]:
    files: list[Attachment] = []
    notes: list[str] = []
    for name in names[:MAX_FILES]:
        data = _read(results, job.id, name)
        if data is None:
            notes.append(f"{name} is missing")
        elif len(data) > MAX_FILE_BYTES:
            notes.append(f"{name} is over Discord's {MAX_FILE_BYTES // 2**20} MiB limit")
        else:
            files.append((name, data, "image/png" if name.endswith(".png") else "application/octet-stream"))
    if len(names) > MAX_FILES:
        notes.append(f"{len(names) - MAX_FILES} more images are not shown")
    prompt = job.input.get("prompt")
    lines = [f"**{prompt}**" if isinstance(prompt, str) and prompt else "Done."] + [f"⚠️ {n}" for n in notes]
    return {"content": clip("\n".join(lines)), "allowed_mentions": NO_MENTIONS}, files


def _read(results: ResultStore, job_id: str, name: str) -> bytes | None:
    try:
        with results.open(job_id, name) as file:
            return file.read(MAX_FILE_BYTES + 1)
    except NotFound:
        return None
    except (OSError, SwellError):
        log.exception("reading result file %s of job %s failed", name, job_id)
        return None


def result_text(result: dict[str, Any]) -> str:
    """The text of a result: a `text` field, the first choice's text or message, else its JSON."""
    if isinstance(result.get("text"), str):
        return str(result["text"])
    choices = result.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first = choices[0]
        message = first.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return str(message["content"])
        if isinstance(first.get("text"), str):
            return str(first["text"])
    return "```json\n" + json.dumps(result, ensure_ascii=False, indent=1)[: MAX_CONTENT - 20] + "\n```"


def text_message(text: str) -> tuple[dict[str, Any], list[Attachment]]:
    """Text as content, or beyond 2,000 characters as a `result.txt` attachment with its start."""
    text = text or "(empty)"
    if len(text) <= MAX_CONTENT:
        return {"content": text, "allowed_mentions": NO_MENTIONS}, []
    head = clip(text, MAX_CONTENT - 60) + f"\n(the whole text is in {TEXT_FILE})"
    data = text.encode()[:MAX_FILE_BYTES]
    return {"content": head, "allowed_mentions": NO_MENTIONS}, [
        (TEXT_FILE, data, "text/plain; charset=utf-8")
    ]


__all__ = ["CHANNEL", "DiscordChannel", "expiry_text", "final_message", "progress_text", "result_text"]
