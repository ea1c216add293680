"""The outbox dispatcher: one loop that works off every delivery row, whatever its channel.

A job's deliveries (a webhook, a Discord follow-up, ...) are rows of the queue's outbox
(`swell.queue.base.Outbox`), one per (job, channel), made with the job and armed in the step that
makes it final (see `swell.core.jobs.Delivery`). A `Channel` knows how to reach one kind of target;
the `Dispatcher` decides when, how often and how many at once, for all of them:

- **due rows** (PENDING, `next_at` passed) of the channels it has are delivered, up to
  `concurrency` at once: `channel.deliver(row, job)` for a final job. A try that raises
  `DeliveryFailed` backs off (`RetryPolicy.backoff`) and, out of `max_attempts` or `permanent`,
  fails for good; one with `retry_after` (the target rate-limited it: a 429) is due again then and is
  not counted, so rate limits never use up a follow-up. Any other exception is a bug of the channel:
  logged, and a counted failed try, so a row never stalls. A due row whose `expires_at` has passed
  is marked EXPIRED without a try.
- **open rows** (WAITING: the job still runs) are looked at every `OPEN_EVERY` seconds: a row whose
  target expires within `expire_lead` seconds gets `channel.expire(row, job)` once (say "still
  working, look at the API"), then is marked EXPIRED; for a channel that `wants_progress`, the
  dispatcher follows the queue's one event cursor (`events_since(cursor, kinds=("progress",))`) and
  calls `channel.progress(row, job)` with the job as it is now for rows whose job reported progress
  past the row's `progress_seq` (best effort: a failure is logged, and the row moves on; the channel
  rate-limits itself).

Exactly one task per row at a time, whatever it does (a delivery, a progress edit, an expiry): a row's
key enters `_in_flight` when its task is created, before the loop can yield, and leaves it once the
task's outcome is saved. Queue reads and writes run in a small pool of the dispatcher's own, never on
the event loop; a read in a thread can race a task that ends meanwhile (the read may still see the
row as due), so the keys whose task ended while a read was running are left out of that read's
answer, and looked at again by the next read. Across processes, `save_delivery` stores a try only
over the row's version it was read with.

Delivery is at least once: a dispatcher that stops mid-try leaves the row due, and it is tried again
after a restart (receivers deduplicate on the job id and state).

Channels. A channel is any object with `name`, `wants_progress` and the three coroutines of
`Channel`; it may also have `session()`, an async context manager the dispatcher holds open while it
runs (a connection pool), and `close()`, called by `Dispatcher.close`. `create_app` builds one
dispatcher with the webhook channel always and adds the channels it is given:

    create_app(config, settings, queue, channels={"discord": DiscordChannel(...)})

(a channel under the name `webhook` replaces the default one). Rows of a channel no dispatcher has
stay due, untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, runtime_checkable

from swell.core.clock import Clock, SystemClock
from swell.core.errors import ConfigError, Conflict, SwellError
from swell.core.jobs import Delivery, DeliveryState, EventKind, Job, JobEvent, RetryPolicy
from swell.queue.base import Outbox

log = logging.getLogger("swell.outbox")

IDLE_SECONDS = 0.1  # seconds between reads of due rows while nothing is due
OPEN_EVERY = 0.5  # seconds between looks at open rows (expiry) and at new progress events
OPEN_LIMIT = 1000  # open rows read per look
EXPIRE_LEAD = 60.0  # seconds before a target expires that its channel's `expire` is called
QUEUE_THREADS = 4

T = TypeVar("T")
Key = tuple[str, str]  # (job id, channel): one row


class DeliveryFailed(SwellError):
    """Raised by a channel for a try that did not reach its target. `retry_after`: the target asked
    to wait that long (a rate limit; the try is not counted); `permanent`: trying again cannot help
    (a refused URL, a target that is gone)."""

    def __init__(self, error: str, *, retry_after: float | None = None, permanent: bool = False) -> None:
        super().__init__(error)
        self.error = error
        self.retry_after = retry_after
        self.permanent = permanent


@runtime_checkable
class Channel(Protocol):
    """One kind of target a job's outcome is delivered to."""

    name: str
    wants_progress: bool  # the dispatcher calls `progress()` for the channel's open rows

    async def deliver(self, delivery: Delivery, job: Job) -> None:
        """Deliver the final `job` to the row's target; `DeliveryFailed` for a try that did not."""
        ...

    async def progress(self, delivery: Delivery, job: Job) -> None:
        """Show the running `job`'s progress at the target (best effort)."""
        ...

    async def expire(self, delivery: Delivery, job: Job) -> None:
        """The target stops accepting in a moment and the job still runs: say so (best effort)."""
        ...


class EventReader(Protocol):
    """The part of the queue's history the dispatcher follows for progress edits."""

    def events_since(
        self, after_seq: int, kinds: Sequence[str] = ("state",), limit: int = 1000
    ) -> list[JobEvent]: ...

    def event_cursor(self) -> int: ...


class Dispatcher:
    """Works off the outbox through `channels` (name -> channel), up to `concurrency` tasks at once,
    one per row at a time (see the module docstring)."""

    def __init__(
        self,
        outbox: Outbox,
        channels: Mapping[str, Channel],
        *,
        clock: Clock = SystemClock(),
        max_attempts: int = 8,
        policy: RetryPolicy = RetryPolicy(),
        concurrency: int = 32,
        expire_lead: float = EXPIRE_LEAD,
        events: EventReader | None = None,
    ) -> None:
        for name, channel in channels.items():
            if channel.name != name:
                raise ConfigError(f"channel {channel.name!r} is registered as {name!r}", key="channels")
        self.outbox = outbox
        self.channels = dict(channels)
        self.clock = clock
        self.max_attempts = max_attempts
        self.policy = policy
        self.concurrency = concurrency
        self.expire_lead = expire_lead
        self.events = events if events is not None else _event_reader(outbox)
        self._in_flight: set[Key] = set()
        self._reading = 0
        self._ended_while_reading: set[Key] = set()
        self._cursor: int | None = None
        self._news: dict[str, int] = {}  # job id -> its latest progress event seq not yet shown
        self._next_open = 0.0
        self._pool = ThreadPoolExecutor(max_workers=QUEUE_THREADS, thread_name_prefix="swell-outbox")
        self.delivered = 0
        self.failed = 0
        self.expired = 0

    @property
    def cursor(self) -> int | None:
        """The event seq the progress reader has reached (None before its first look)."""
        return self._cursor

    @property
    def progress_channels(self) -> list[str]:
        return [name for name, channel in self.channels.items() if channel.wants_progress]

    async def run(self, stop: asyncio.Event) -> None:
        """Work off the outbox until `stop` is set; tries cut short are made again later."""
        tasks: set[asyncio.Task[None]] = set()
        async with contextlib.AsyncExitStack() as sessions:
            for channel in self.channels.values():
                session = getattr(channel, "session", None)
                if session is not None:
                    await sessions.enter_async_context(session())
            try:
                while not stop.is_set():
                    if not await self._pass_logged(tasks):
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), IDLE_SECONDS)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def deliver(self, delivery: Delivery, job: Job) -> Delivery:
        """Make one try of a row now and record its outcome; returns the row as the try left it
        (`version` as read: the stored one is one more, unless the row changed meanwhile)."""
        self._mark(delivery)
        return await self._marked(delivery, self._try(delivery, job))

    def close(self) -> None:
        """Release the dispatcher's threads, and each channel's that has a `close()`."""
        self._pool.shutdown(wait=False)
        for channel in self.channels.values():
            close = getattr(channel, "close", None)
            if close is not None:
                close()

    def __repr__(self) -> str:
        return (
            f"Dispatcher(channels={sorted(self.channels)}, in_flight={len(self._in_flight)}, "
            f"delivered={self.delivered}, failed={self.failed}, expired={self.expired})"
        )

    # -- the loop ---------------------------------------------------------------------------------

    async def _pass_logged(self, tasks: set[asyncio.Task[None]]) -> int:
        try:
            return await self._pass(tasks)
        except Exception:  # the queue is unreachable for now: keep trying, never stop delivering
            log.exception("reading the outbox failed")
            return 0

    async def _pass(self, tasks: set[asyncio.Task[None]]) -> int:
        """Start tasks for due rows, and every OPEN_EVERY seconds for open ones; how many started."""
        started = await self._start_due(tasks)
        loop = asyncio.get_running_loop()
        if loop.time() >= self._next_open:
            self._next_open = loop.time() + OPEN_EVERY
            started += await self._start_open(tasks)
        return started

    async def _start_due(self, tasks: set[asyncio.Task[None]]) -> int:
        free = self.concurrency - len(tasks)
        if free <= 0:
            return 0
        due = await self._read(
            self.outbox.due_deliveries, None, free + len(self._in_flight), list(self.channels)
        )
        fresh = [(row, job) for row, job in due if row.key not in self._in_flight][:free]
        for row, job in fresh:
            self._start(tasks, row, self._try(row, job))
        return len(fresh)

    async def _start_open(self, tasks: set[asyncio.Task[None]]) -> int:
        """Expire the open rows whose target is about to expire; show progress to the others.

        Rows that expire come first in the read, so no number of lasting rows (webhooks of running
        jobs) hides one; when the read is full, the rows of progress channels are read on their own
        too (if there is news for them). News a row could not be shown now (its task was busy) waits
        for the next look, as long as the job's rows are open."""
        self._news.update(await self._new_progress())
        latest = self._news
        rows = await self._read(self.outbox.open_deliveries, list(self.channels), OPEN_LIMIT)
        if latest and len(rows) >= OPEN_LIMIT:
            seen = {row.key for row, _ in rows}
            more = await self._read(self.outbox.open_deliveries, self.progress_channels, OPEN_LIMIT)
            rows += [(row, job) for row, job in more if row.key not in seen]
        started = 0
        for row, job in rows:
            if len(tasks) >= self.concurrency:
                break
            if row.key in self._in_flight:
                continue
            if self._expiring(row):
                self._start(tasks, row, self._expire(row, job))
            elif self.channels[row.channel].wants_progress and latest.get(job.id, 0) > row.progress_seq:
                self._start(tasks, row, self._progress(row, job, latest[job.id]))
            else:
                continue
            started += 1
        still_open = {job.id for _, job in rows}
        self._news = {job_id: seq for job_id, seq in latest.items() if job_id in still_open}
        return started

    async def _new_progress(self) -> dict[str, int]:
        """{job id: seq} of the latest progress event of each job since the cursor, which starts at
        the newest event when the dispatcher first looks (what happened before it ran is not shown)."""
        if not self.progress_channels or self.events is None:
            return {}
        if self._cursor is None:
            self._cursor = await self._in_thread(self.events.event_cursor)
        events = await self._in_thread(self.events.events_since, self._cursor, (EventKind.PROGRESS.value,))
        if events:
            self._cursor = events[-1].seq
        return {event.job_id: event.seq for event in events}

    def _expiring(self, row: Delivery) -> bool:
        return row.expires_at is not None and self.clock.now() >= row.expires_at - self.expire_lead

    # -- one row's task ---------------------------------------------------------------------------

    def _mark(self, row: Delivery) -> None:
        if row.key in self._in_flight:
            raise Conflict(f"a {row.channel} delivery for job {row.job_id} is already in flight", field="id")
        self._in_flight.add(row.key)

    def _start(self, tasks: set[asyncio.Task[None]], row: Delivery, work: Awaitable[Delivery | None]) -> None:
        """Mark the row in flight (before the next await, so no later read starts it again) and run
        `work` for it in a task of its own."""
        self._mark(row)
        task = asyncio.create_task(self._marked_logged(row, work), name=f"outbox-{row.channel}-{row.job_id}")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _marked_logged(self, row: Delivery, work: Awaitable[Delivery | None]) -> None:
        try:
            await self._marked(row, work)
        except Exception:  # the queue refused the outcome; the row stays as it was and is tried again
            log.exception("the %s delivery of job %s could not be recorded", row.channel, row.job_id)

    async def _marked(self, row: Delivery, work: Awaitable[Delivery | None]) -> Delivery:
        """Run `work` for a row marked in flight, save what it returns, unmark the row."""
        try:
            updated = await work
            if updated is not None:
                await self._in_thread(self.outbox.save_delivery, updated)
        finally:
            self._in_flight.discard(row.key)
            if self._reading:
                self._ended_while_reading.add(row.key)
        return row if updated is None else updated

    async def _try(self, row: Delivery, job: Job) -> Delivery:
        """One try of a due row: the row as it should be saved after it."""
        channel = self.channels[row.channel]
        if row.expires_at is not None and self.clock.now() >= row.expires_at:
            self.expired += 1
            return row.expired()
        try:
            await channel.deliver(row, job)
        except DeliveryFailed as exc:
            return self._failed(row, exc.error, retry_after=exc.retry_after, permanent=exc.permanent)
        except Exception as exc:  # a channel's bug: a counted failed try, so the row never stalls
            log.exception("the %s channel failed on job %s", row.channel, row.job_id)
            return self._failed(row, f"{type(exc).__name__}: {exc}".rstrip(": "))
        self.delivered += 1
        return row.delivered(self.clock.now())

    def _failed(
        self, row: Delivery, error: str, *, retry_after: float | None = None, permanent: bool = False
    ) -> Delivery:
        updated = row.failed(
            error,
            self.clock.now(),
            max_attempts=1 if permanent else self.max_attempts,
            policy=self.policy,
            retry_after=None if permanent else retry_after,
        )
        if updated.state is DeliveryState.FAILED:
            self.failed += 1
            log.warning("gave up on the %s delivery of job %s: %s", row.channel, row.job_id, error)
        return updated

    async def _expire(self, row: Delivery, job: Job) -> Delivery:
        """Tell the target it is about to expire (unless it has already), then mark the row."""
        if row.expires_at is not None and self.clock.now() < row.expires_at:
            await _best_effort(self.channels[row.channel].expire(row, job), "expire", row)
        self.expired += 1
        return row.expired()

    async def _progress(self, row: Delivery, job: Job, seq: int) -> Delivery:
        await _best_effort(self.channels[row.channel].progress(row, job), "progress", row)
        return row.progressed(seq)

    # -- the queue, off the loop ------------------------------------------------------------------

    async def _read(
        self, fn: Callable[..., list[tuple[Delivery, Job]]], *args: Any
    ) -> list[tuple[Delivery, Job]]:
        """Rows read in a thread, less those whose task ended during the read (stale)."""
        if self._reading == 0:
            self._ended_while_reading = set()
        self._reading += 1
        try:
            rows = await self._in_thread(fn, *args)
        finally:
            self._reading -= 1
        return [(row, job) for row, job in rows if row.key not in self._ended_while_reading]

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


async def _best_effort(call: Awaitable[None], what: str, row: Delivery) -> None:
    try:
        await call
    except Exception:
        log.warning("the %s channel's %s for job %s failed", row.channel, what, row.job_id, exc_info=True)


def _event_reader(outbox: Outbox) -> EventReader | None:
    """The outbox itself when it also keeps the event log (every queue backend does)."""
    if hasattr(outbox, "events_since") and hasattr(outbox, "event_cursor"):
        return outbox  # type: ignore[return-value]
    return None


__all__ = ["Channel", "DeliveryFailed", "Dispatcher", "EventReader"]
