"""The queue protocol every backend implements, and the registry that opens one by URL.

Backends persist what the pure transitions in `swell.core.jobs` decide; they own atomicity
(a job is leased by one worker at a time, an idempotency key maps to one job) and nothing else.
Every method is synchronous and safe to call from several threads and processes at once
(for the memory backend: threads of one process).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from swell.core.errors import SwellError
from swell.core.jobs import Job, JobSpec, JobState

Submitted = tuple[Job, bool]  # the job, and whether this submit created it


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a worker reports for one job it leased: its result, or the error it failed with."""

    job_id: str
    result: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = True  # for an error: try again after back-off (False: the job fails for good)
    split: int | None = None  # hand the job back untouched, to be leased in batches of at most this

    @classmethod
    def failure(cls, job_id: str, error: str, *, retryable: bool = True) -> Outcome:
        return cls(job_id, error=error, retryable=retryable)

    @classmethod
    def handback(cls, job_id: str, error: str, *, batch_limit: int) -> Outcome:
        """The job's batch failed as a whole (timed out, crashed): not the job's own failure, so the
        attempt does not count; it goes back to be leased with at most `batch_limit` jobs."""
        return cls(job_id, error=error, split=max(1, batch_limit))


@dataclass(frozen=True, slots=True)
class JobTimes:
    """When one finished job was submitted, last started and finished: a job without its input,
    result or error, for readers (the gateway's metrics) that would otherwise decode them for nothing."""

    id: str
    service: str
    state: JobState
    created_at: float
    started_at: float | None
    finished_at: float

    @classmethod
    def of(cls, job: Job) -> JobTimes:
        if job.finished_at is None:
            raise ValueError(f"job {job.id} has not finished")
        return cls(job.id, job.service, job.state, job.created_at, job.started_at, job.finished_at)


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
class QueueBackend(Protocol):
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

    def lease(
        self,
        service: str,
        owner: str,
        *,
        max_jobs: int = 1,
        lease_seconds: float = 30.0,
        model: str | None = None,
    ) -> list[Job]:
        """Take up to `max_jobs` available jobs of `service` (lowest rank first; with `model`, jobs
        for that model before others). Expired leases are reaped first. The batch is never larger
        than the smallest `batch_limit` among its jobs: of the first `max_jobs` candidates, one that
        does not fit is left queued for the next lease. Each job records the batch's size in
        `leased_with`."""
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
        """Cancel a queued job; `IllegalTransition` (409) once leased or final."""
        ...

    def cancel_many(self, *, service: str | None = None) -> int:
        """Cancel every job queued now (of `service`); returns how many. Leased jobs run on."""
        ...

    def retry(self, job_id: str) -> Job:
        """Re-drive a dead, failed or cancelled job: back to the queue with its attempts reset and
        its webhook re-armed (`Job.redrive`); `IllegalTransition` (409) in any other state."""
        ...

    def reap(self) -> int:
        """Return jobs whose lease expired to the queue (or bury them); returns how many."""
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

    def finished_since(self, since: float, limit: int = 1000) -> list[Job]:
        """Jobs that reached a final state at or after `since`, oldest first (the brain)."""
        ...

    def finished_times_since(self, since: float, limit: int = 1000) -> list[JobTimes]:
        """The times of the same jobs as `finished_since`, in the same order, reading nothing else."""
        ...

    def depth(self) -> dict[str, dict[str, int]]:
        """{service: {state: count}} for every service that has jobs."""
        ...

    def due_webhooks(self, limit: int = 100) -> list[Job]:
        """Final jobs whose webhook delivery is due now."""
        ...

    def save_webhook(self, job: Job) -> None:
        """Persist a job's webhook fields (state, attempts, next_at, error) after a delivery try."""
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
