"""The queue as the gateway's handlers see it: async, off the event loop, bounded.

Every queue backend is synchronous and may block (SQLite waits for its write lock, a disk can
freeze, Redis can be slow to answer). `AsyncQueue` is the one place that decides where such calls
run: in a thread pool of its own, never the loop's default executor (which others share) and never
on the loop itself. Its backlog is bounded: past `max_backlog` calls queued or running, a new call
is refused at once with `Unavailable` (503, Retry-After) rather than waiting behind a stuck disk.
Storage failures that a backend did not translate itself (an `OSError`, a driver's error) become
`Unavailable` here; Swell's own errors pass through.

`probe()` has a pool of one thread to itself, so a health check answers even while the main pool
is full of calls waiting on a lock.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from swell.core.errors import SwellError, Unavailable
from swell.core.jobs import Job, JobEvent, JobSpec, JobState
from swell.queue.base import QueueBackend, Submitted

log = logging.getLogger("swell.gateway")

T = TypeVar("T")


def _storage_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, sqlite3.Error]
    try:
        from redis.exceptions import RedisError
    except ImportError:  # the redis extra is not installed: no such errors to meet
        pass
    else:
        errors.append(RedisError)
    return tuple(errors)


STORAGE_ERRORS = _storage_errors()


class AsyncQueue:
    """`QueueBackend`'s calls as coroutines, run in a bounded pool of `threads` threads."""

    def __init__(
        self, queue: QueueBackend, *, threads: int = 8, max_backlog: int = 512, retry_after: float = 1.0
    ) -> None:
        self.queue = queue
        self.max_backlog = max_backlog
        self.retry_after = retry_after
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="swell-storage")
        self._probe_pool = ThreadPoolExecutor(1, thread_name_prefix="swell-probe")
        self._lock = threading.Lock()
        self._backlog = 0

    def __repr__(self) -> str:
        return f"AsyncQueue({self.queue!r}, backlog={self._backlog}/{self.max_backlog})"

    @property
    def backlog(self) -> int:
        """Calls queued or running now (a call whose caller gave up still counts until it ends)."""
        return self._backlog

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in the pool; `Unavailable` at once when the backlog is full."""
        with self._lock:
            if self._backlog >= self.max_backlog:
                raise Unavailable(
                    f"the gateway is overloaded ({self._backlog} storage calls waiting); retry shortly",
                    retry_after=self.retry_after,
                )
            self._backlog += 1
        future = self._pool.submit(_translated, functools.partial(fn, *args, **kwargs))
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def _done(self, future: Future[Any]) -> None:
        with self._lock:
            self._backlog -= 1

    # -- the queue's calls ------------------------------------------------------------------------

    async def submit_many(self, specs: Sequence[JobSpec], limits: dict[str, int]) -> list[Any]:
        """`queue.submit_many`: per spec a `Submitted` or the `SwellError` that refused it."""
        return await self.run(self.queue.submit_many, list(specs), limits=limits)

    async def get(self, job_id: str) -> Job:
        return await self.run(self.queue.get, job_id)

    async def cancel(self, job_id: str) -> Job:
        return await self.run(self.queue.cancel, job_id)

    async def cancel_many(self, *, service: str | None) -> int:
        return int(await self.run(self.queue.cancel_many, service=service))

    async def events(self, job_id: str, *, after: int, limit: int) -> list[JobEvent]:
        return await self.run(self.queue.events, job_id, after, limit)

    async def retry(self, job_id: str) -> Job:
        return await self.run(self.queue.retry, job_id)

    async def jobs(
        self, *, service: str | None, state: JobState | None, limit: int, before: str | None
    ) -> list[Job]:
        return await self.run(self.queue.jobs, service=service, state=state, limit=limit, before=before)

    async def depth(self) -> dict[str, dict[str, int]]:
        return await self.run(self.queue.depth)

    async def probe(self) -> None:
        """`queue.probe()` in its own thread: `Unavailable` when the storage cannot take a write."""
        future = self._probe_pool.submit(_translated, self.queue.probe)
        await asyncio.wrap_future(future)

    def close(self) -> None:
        """Stop taking calls; queued ones are dropped, running ones finish in their threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._probe_pool.shutdown(wait=False, cancel_futures=True)


def _translated(call: Callable[[], T]) -> T:
    try:
        return call()
    except SwellError:
        raise
    except STORAGE_ERRORS as exc:
        raise Unavailable(f"storage failed: {type(exc).__name__}: {exc}") from exc


__all__ = ["AsyncQueue", "Submitted"]
