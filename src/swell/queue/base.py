"""The queue protocol every backend implements, and the registry that opens one by URL.

Backends persist what the pure transitions in `swell.core.jobs` decide; they own atomicity
(a job is leased by one worker at a time, an idempotency key maps to one job) and nothing else.
Every method is synchronous and safe to call from several threads and processes at once
(for the memory backend: threads of one process).

Events. Each backend keeps a job's history as `JobEvent`s numbered by one per-queue sequence:
every transition appends its `state` event in the same atomic step that stores the job, a cancel
request its `cancel` event, and `report` the `progress` and `delta` events of a running job. Two
readers share the sequence: `events(job_id, after)` (one job's history: `GET /v1/jobs/{id}/events`)
and `events_since(after_seq, kinds)` (every job's: the gateway's metrics and the brain read finished
jobs through it). Retention, the same in every backend:

- `state` and `cancel` events are kept as long as their job (a handful per delivery);
- `progress` and `delta` events are capped at `MAX_ACTIVITY_EVENTS` per job (later ones are dropped,
  while the job's `progress` field keeps moving: its result holds the whole output anyway), and
  deleted once the job has been final for `event_retention` seconds (default `EVENT_RETENTION`);
  trimming runs in `reap()` and, at most every `TRIM_EVERY` seconds, in `settle`.

The outbox (`Outbox`, a role of its own: the delivery dispatcher needs nothing else). `submit` makes
one `Delivery` row per `DeliverySpec` of the job (WAITING) in the atomic step that stores the job;
the transition that makes a job final arms its WAITING rows (PENDING, `next_at` now) in its own
atomic step, and `retry` (a re-drive) re-arms every row (WAITING, attempts reset) in its step. A row
is stored with a `version`; `save_delivery` writes only over the version it was read with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from swell.core.errors import SwellError
from swell.core.jobs import Delivery, Job, JobEvent, JobSpec, JobState

Submitted = tuple[Job, bool]  # the job, and whether this submit created it

EVENT_RETENTION = 3600.0  # seconds a final job keeps its progress and delta events
MAX_ACTIVITY_EVENTS = 10_000  # progress and delta events kept per job
TRIM_EVERY = 60.0  # seconds between the trims `settle` runs on the side
TRIM_BATCH = 500  # jobs trimmed per pass


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a worker reports for one job it leased: its result, or the error it failed with."""

    job_id: str
    result: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = True  # for an error: try again after back-off (False: the job fails for good)
    split: int | None = None  # hand the job back untouched, to be leased in batches of at most this
    cancel: bool = False  # the worker stopped the job at a cancel request: it ends cancelled

    @classmethod
    def failure(cls, job_id: str, error: str, *, retryable: bool = True) -> Outcome:
        return cls(job_id, error=error, retryable=retryable)

    @classmethod
    def handback(cls, job_id: str, error: str, *, batch_limit: int) -> Outcome:
        """The job's batch failed as a whole (timed out, crashed): not the job's own failure, so the
        attempt does not count; it goes back to be leased with at most `batch_limit` jobs."""
        return cls(job_id, error=error, split=max(1, batch_limit))

    @classmethod
    def cancelled(cls, job_id: str) -> Outcome:
        """The worker stopped the job because its cancel was requested (`queue.cancel_requested`):
        it ends `cancelled`, its attempt spent."""
        return cls(job_id, cancel=True)


@dataclass(frozen=True, slots=True)
class Update:
    """What a worker reports about a job while it runs: any of a fraction done (0..1), a message,
    pieces of streamed text, the name of a preview file it stored with the job's results.

    Text comes per completion (a job with `n` > 1 makes several): `deltas` maps a completion's
    index to its new text, and `delta` is completion 0's (what a job of one completion sends, so
    callers that know of one text stay as they were). Both may name completion 0: `delta` comes
    first."""

    job_id: str
    fraction: float | None = None
    message: str | None = None
    delta: str | None = None
    preview: str | None = None
    deltas: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [i for i in self.deltas if isinstance(i, bool) or not isinstance(i, int) or i < 0]
        if bad:
            raise ValueError(f"deltas: a completion index is an int from 0, not {bad[0]!r}")

    @property
    def progress(self) -> bool:
        """Whether the update carries progress (and so appends a `progress` event)."""
        return self.fraction is not None or self.message is not None or self.preview is not None

    def texts(self) -> list[tuple[int, str]]:
        """Each completion's new text, `(index, text)` by index, leaving out the empty ones."""
        by_index = {0: self.delta or ""} if self.delta else {}
        for index, text in self.deltas.items():
            by_index[index] = by_index.get(index, "") + text
        return [(i, text) for i, text in sorted(by_index.items()) if text]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counters since the backend was opened, plus depth by service and state now."""

    submitted: int = 0
    deduplicated: int = 0  # submits answered with an existing job (idempotency)
    rejected: int = 0  # submits refused by admission (queue full)
    leased: int = 0
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    expired: int = 0  # leases that ran out
    split: int = 0  # deliveries handed back uncounted, the job to be leased in a smaller batch
    redriven: int = 0  # dead, failed or cancelled jobs sent back to the queue by `retry`
    depth: dict[str, dict[str, int]] = field(default_factory=dict)


@runtime_checkable
class Outbox(Protocol):
    """The delivery rows of jobs, one per (job id, channel): what the dispatcher reads and writes."""

    def due_deliveries(
        self, now: float | None = None, limit: int = 100, channels: Sequence[str] | None = None
    ) -> list[tuple[Delivery, Job]]:
        """PENDING rows (of `channels`, or any) due at `now` (the queue clock's now when None), with
        their jobs: the earliest `next_at` first, ties in the order the rows were made."""
        ...

    def open_deliveries(self, channels: Sequence[str], limit: int = 100) -> list[tuple[Delivery, Job]]:
        """WAITING rows of `channels` (their jobs are not final yet), with their jobs: the rows that
        expire first first, then those without `expires_at` in the order they were made (progress
        edits, expiry)."""
        ...

    def save_delivery(self, delivery: Delivery) -> None:
        """Store the row's state, attempts, next_at, error and progress_seq, if its stored `version`
        is still `delivery.version` (and bump it); a row changed meanwhile (re-armed by a re-drive,
        saved by another dispatcher) is left as it is, silently. `JobNotFound` for no such row."""
        ...

    def deliveries(self, job_id: str) -> list[Delivery]:
        """The job's rows, in the order they were made; `JobNotFound` for an unknown job."""
        ...


@runtime_checkable
class QueueBackend(Outbox, Protocol):
    """Every method may raise `Unavailable` (503, with retry_after) when the storage cannot serve it
    now: a full or read-only disk, an I/O error, a lock held too long, an unreachable server."""

    def submit(self, spec: JobSpec, *, limit: int | None = None) -> tuple[Job, bool]:
        """Enqueue a job; returns (job, created). An idempotency key already used for the same
        service and the same request (input and model) returns the existing job with created=False;
        for a different request it raises `Conflict` (409, field `idempotency_key`). Raises
        `QueueFull` (with retry_after) when the service already has `limit` jobs queued or leased."""
        ...

    def submit_many(
        self, specs: Sequence[JobSpec], *, limits: Mapping[str, int] | None = None
    ) -> list[Submitted | SwellError]:
        """`submit` for each spec in order, in one atomic step where the backend has one (SQLite:
        one transaction), so a burst of submits costs one commit. `limits` maps a service to its
        admission limit. A refused spec gets its error (`QueueFull`, `Conflict`) in its place; the
        others are stored. A storage failure raises `Unavailable` for the whole call."""
        ...

    def get(self, job_id: str) -> Job:
        """The job, or `JobNotFound`."""
        ...

    def get_many(self, job_ids: Sequence[str]) -> list[Job]:
        """The jobs of those ids that exist, in the order asked (one read, for readers of many)."""
        ...

    def lease(
        self,
        service: str,
        owner: str,
        *,
        max_jobs: int = 1,
        lease_seconds: float = 30.0,
        model: str | None = None,
        models: Sequence[str] = (),
        starve_after: float | None = None,
    ) -> list[Job]:
        """Take up to `max_jobs` available jobs of `service` (lowest rank first; with `model`, jobs
        for that model before others). Expired leases are reaped first. The batch is never larger
        than the smallest `batch_limit` among its jobs: of the first `max_jobs` candidates, one that
        does not fit is left queued for the next lease. Each job records the batch's size in
        `leased_with`.

        Model-affine leasing (`models`, the checkpoints the worker holds, or `starve_after` set; a
        `model` then counts as one more held): jobs of any model that have been available for
        `starve_after` seconds or more come first (the starvation guard), then jobs of the held
        models, each group by rank. A job of another model is taken only when neither exists: then
        the lowest-ranked job and more of its model, so that one lease costs at most one load.
        Every backend decides through `swell.queue._common.affine_candidates`."""
        ...

    def interactive_waiting(self, service: str, models: Sequence[str | None] = ()) -> bool:
        """Whether an interactive (not `batch`) job of `service` is queued and available now: of one
        of `models`, or of any model when none are given. Cheap (one indexed read per model): a
        worker running batch work asks it every second and hands the batch job back when true."""
        ...

    def renew(self, job_ids: Sequence[str], owner: str, lease_seconds: float) -> None:
        """Extend the leases `owner` holds; `LeaseLost` if any of them is no longer its own."""
        ...

    def complete(self, job_id: str, owner: str, result: dict[str, Any]) -> Job:
        """Record a result. `LeaseLost` if `owner` no longer holds the job (it ran elsewhere)."""
        ...

    def fail(self, job_id: str, owner: str, error: str, *, retryable: bool = True) -> Job:
        """Record a failed delivery: retry after back-off, dead when out of attempts, failed when
        not retryable."""
        ...

    def settle(self, owner: str, outcomes: Sequence[Outcome]) -> list[Job | SwellError]:
        """`complete`, `fail` or hand back (`Outcome.handback`, see `Job.handback`) each outcome, in
        one atomic step where the backend has one, so a batch costs one commit. A job `owner` no
        longer holds gets its `LeaseLost` (or `JobNotFound`) in its place; the others are recorded."""
        ...

    def release(self, job_id: str, owner: str) -> Job:
        """Hand a leased job back untouched (a draining worker)."""
        ...

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once. For a leased job, record a cancel request instead (its
        `cancel_requested` flag and a `cancel` event) and return it still leased: the worker stops
        it and settles it with `Outcome.cancelled`. `IllegalTransition` (409) once final."""
        ...

    def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        """Those of `job_ids` a worker should stop: a cancel was requested, or the job is cancelled
        already. Cheap: a worker calls it every fraction of a second while a batch runs."""
        ...

    def report(self, owner: str, updates: Sequence[Update]) -> None:
        """Record what a worker reports about jobs it runs: the job's progress (shown by `get`), a
        `progress` event for an update with a fraction, message or preview, then a `delta` event per
        completion with text, by index (data `{text}` for completion 0, as before completions had
        an index; `{text, index}` for another). Updates for jobs `owner` does not hold (any more)
        are ignored, never an error."""
        ...

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        """The job's events with `seq > after`, oldest first; `JobNotFound` for an unknown job."""
        ...

    def events_since(
        self, after_seq: int, kinds: Sequence[str] = ("state",), limit: int = 1000
    ) -> list[JobEvent]:
        """Every job's events of `kinds` with `seq > after_seq`, in `seq` order: the one cursor
        through which readers follow what happens to all jobs."""
        ...

    def event_cursor(self) -> int:
        """The seq of the newest event (0 before any): where a reader that wants only what happens
        from now on starts `events_since`."""
        ...

    def cancel_many(self, *, service: str | None = None) -> int:
        """Cancel every job queued now (of `service`); returns how many. Leased jobs run on."""
        ...

    def retry(self, job_id: str) -> Job:
        """Re-drive a dead, failed or cancelled job: back to the queue with its attempts reset and
        its deliveries re-armed (`Job.redrive`, `Delivery.rearmed`); `IllegalTransition` (409) in any
        other state."""
        ...

    def reap(self) -> int:
        """Return jobs whose lease expired to the queue (or bury them), and trim the events of
        old final jobs; returns how many leases expired."""
        ...

    def jobs(
        self,
        *,
        service: str | None = None,
        state: JobState | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Job]:
        """Newest first: by creation time, ties in submission order. `before` is a cursor: the id
        of the last job of the previous page, whose successors follow (whatever its state is now);
        `ValidationError` (field `cursor`) when it names no job."""
        ...

    def depth(self) -> dict[str, dict[str, int]]:
        """{service: {state: count}} for every service that has jobs."""
        ...

    def probe(self) -> None:
        """Raise `Unavailable` unless the storage takes a write now (readiness): SQLite commits a tiny
        transaction, waiting a few seconds at most for the write lock; Redis sets a key that expires."""
        ...

    def statistics(self) -> QueueStats: ...

    def close(self) -> None: ...


def open_queue(url: str, **options: Any) -> QueueBackend:
    """Open a backend by URL: `memory://`, `sqlite:///path/to/swell.db`, `redis://host:port/db`."""
    scheme = url.split("://", 1)[0]
    if scheme == "memory":
        from swell.queue.memory import MemoryQueue

        return MemoryQueue(**options)
    if scheme == "sqlite":
        from swell.queue.sqlite import SQLiteQueue

        return SQLiteQueue(url.removeprefix("sqlite:///"), **options)
    if scheme == "redis":
        try:
            from swell.queue.redis import RedisQueue
        except ImportError as exc:  # pragma: no cover - depends on the extra
            from swell.core.errors import MissingExtra

            raise MissingExtra("the redis queue", "redis") from exc
        return RedisQueue(url, **options)
    from swell.core.errors import ConfigError

    raise ConfigError(f"unknown queue backend {scheme!r}; use memory://, sqlite:/// or redis://", key="queue")
