"""`GET /v1/jobs/{id}/events`: a job's event log as server-sent events.

Each event is one SSE message, `id` its `seq` (so a browser's `EventSource` resumes by itself after
a drop, sending `Last-Event-ID`), `event` its kind, `data` the event as JSON:

    id: 42
    event: progress
    data: {"seq": 42, "job_id": "...", "kind": "progress", "at": 1700000000.5, "data": {"fraction": 0.5}}

The stream starts after `Last-Event-ID` (or `?after=`), sends what the log holds, then polls the
queue through `AsyncQueue` (never on the event loop) every `FIRST_POLL` seconds growing to
`LAST_POLL` while nothing happens, and ends after the job's final `state` event. A comment line
every `heartbeat` seconds keeps proxies from closing an idle stream and tells the server that a
client left (the write fails); a client that leaves ends the stream at the next poll either way.
A client resuming after the final event of a job that is still final gets an empty stream at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from swell.core.errors import ValidationError
from swell.core.jobs import EventKind, Job, JobEvent, JobState
from swell.gateway.storage import AsyncQueue

FIRST_POLL = 0.05  # seconds between looks at a quiet job, growing to LAST_POLL
LAST_POLL = 0.5
HEARTBEAT = 15.0  # seconds between keep-alive comments on a quiet stream
PAGE = 500  # events read per poll
RECONNECT_MS = 1000  # what a client's EventSource waits before reconnecting
FINAL = frozenset(state.value for state in JobState if state.final)
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering either


def sse_message(event: JobEvent) -> bytes:
    """One event in the SSE wire format (the JSON holds no newline, so one `data:` line)."""
    data = json.dumps(event.to_public(), separators=(",", ":"), ensure_ascii=False)
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {data}\n\n".encode()


def is_final(event: JobEvent) -> bool:
    return event.kind == EventKind.STATE.value and event.data.get("state") in FINAL


def resume_point(last_event_id: str | None, after: int | None) -> int:
    """The seq a stream starts after: `Last-Event-ID` wins over `?after=`; 422 naming a bad one."""
    if last_event_id is None:
        return after or 0
    text = last_event_id.strip()
    if not text.isdigit():
        raise ValidationError(
            "Last-Event-ID must be an event id (a non-negative integer)", field="Last-Event-ID"
        )
    return int(text)


@dataclass
class EventStream:
    """Streams jobs' events (`app.state.events`; its timings may be tuned in place)."""

    storage: AsyncQueue
    heartbeat: float = HEARTBEAT
    first_poll: float = FIRST_POLL
    last_poll: float = LAST_POLL

    async def stream(
        self, job: Job, after: int, disconnected: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[bytes]:
        """SSE messages of `job`'s events after seq `after`, until its final state event."""
        loop = asyncio.get_running_loop()
        yield f"retry: {RECONNECT_MS}\n\n".encode()
        cursor, quiet_since, interval = after, loop.time(), self.first_poll
        first = True
        while True:
            events = await self.storage.events(job.id, after=cursor, limit=PAGE)
            for event in events:
                yield sse_message(event)
                if is_final(event):
                    return
            if events:
                cursor, quiet_since, interval, first = events[-1].seq, loop.time(), self.first_poll, False
                continue
            if (first and job.state.final) or await disconnected():
                return  # resumed after the end, or nobody is listening
            first = False
            if loop.time() - quiet_since >= self.heartbeat:
                yield b": keep-alive\n\n"
                quiet_since = loop.time()
            await asyncio.sleep(interval)
            interval = min(self.last_poll, interval * 1.5)
