"""Small rules every queue backend shares: lease ownership, admission back-off and counters.

They sit here so that the memory, SQLite and Redis backends decide the same way; the job
lifecycle itself lives in `swell.core.jobs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeVar

from swell.core.errors import Conflict, JobNotFound, LeaseLost, SwellError, Unavailable, ValidationError
from swell.core.jobs import (
    Delivery,
    DeliveryStep,
    EventKind,
    Job,
    JobSpec,
    JobState,
    Priority,
    RetryPolicy,
    progress_event_data,
    state_event_data,
)
from swell.queue.base import MAX_ACTIVITY_EVENTS, Outcome, QueueStats, Submitted, Update

Appended = tuple[str, dict[str, Any]]  # an event to append: its kind and data

T = TypeVar("T")

ADMISSION_WINDOW = 60.0  # seconds of completions that estimate a service's drain rate
MAX_RETRY_AFTER = 30.0  # what a full queue with no recent completions asks clients to wait
ACTIVE_STATES = (JobState.QUEUED, JobState.LEASED)  # the states admission counts


def require_owner(job: Job, owner: str) -> None:
    """`LeaseLost` unless `owner` holds the lease on `job` now."""
    if job.state is not JobState.LEASED or job.lease_owner != owner:
        raise LeaseLost(f"job {job.id} is not leased to {owner} (it is {job.state.value})")


def apply_outcome(job: Job, owner: str, outcome: Outcome, now: float, policy: RetryPolicy) -> Job:
    """The job after `owner` reported `outcome` for it; `LeaseLost` unless `owner` holds it."""
    require_owner(job, owner)
    if outcome.cancel:
        return job.cancel(now)
    if outcome.split is not None:
        error = outcome.error or "its batch was handed back"
        return job.handback(error, now, batch_limit=outcome.split, policy=policy)
    if outcome.error is None:
        return job.succeed(outcome.result or {}, now)
    return job.fail(outcome.error, now, retryable=outcome.retryable, policy=policy)


def cancel_or_request(job: Job, now: float) -> Job:
    """`queue.cancel`: a queued job is cancelled now, a leased one gets a request its worker
    answers (a final one raises `IllegalTransition`)."""
    return job.request_cancel() if job.state is JobState.LEASED else job.cancel(now)


def transition_events(before: Job | None, after: Job) -> list[Appended]:
    """The events that storing `after` in place of `before` appends: its transition's `state` event,
    or the `cancel` event of a new cancel request."""
    state = state_event_data(before, after)
    if state is not None:
        return [(EventKind.STATE.value, state)]
    if before is not None and after.cancel_requested and not before.cancel_requested:
        return [(EventKind.CANCEL.value, {})]
    return []


def reported(job: Job, update: Update, activity: int) -> tuple[Job, list[Appended]]:
    """The job after `update` and the events it appends (its `progress` event, then one `delta` per
    completion with text, by index), given the `activity` events (progress and delta) the job holds
    already: none past `MAX_ACTIVITY_EVENTS`, though the progress still moves."""
    if update.progress:
        job = job.with_progress(update.fraction, update.message)
    events: list[Appended] = []
    if update.progress:
        events.append((EventKind.PROGRESS.value, progress_event_data(job, update.preview)))
    events += [(EventKind.DELTA.value, delta_event_data(i, text)) for i, text in update.texts()]
    return job, events[: max(0, MAX_ACTIVITY_EVENTS - activity)]


def delta_event_data(index: int, text: str) -> dict[str, Any]:
    """A `delta` event's data: `{text}` for completion 0 (the shape readers knew before a job could
    stream several), `{text, index}` for any other."""
    return {"text": text} if index == 0 else {"text": text, "index": index}


def holds(job: Job | None, owner: str) -> bool:
    return job is not None and job.state is JobState.LEASED and job.lease_owner == owner


def wants_stop(job: Job) -> bool:
    """Whether a worker running `job` should stop it (`queue.cancel_requested`)."""
    return job.cancel_requested or job.state is JobState.CANCELLED


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """`kinds` as known event kinds; `ValidationError` (field `kinds`) naming an unknown one."""
    known = {kind.value for kind in EventKind}
    unknown = sorted(set(kinds) - known)
    if unknown:
        raise ValidationError(f"unknown event kinds {', '.join(unknown)}", field="kinds")
    return tuple(kinds)


def uncounted(before: Job, after: Job) -> bool:
    """Whether a delivery that was settled or expired ended without counting against the job (its
    batch was handed back or split)."""
    return (
        before.state is JobState.LEASED
        and after.state is JobState.QUEUED
        and after.attempts < before.attempts
    )


class ReadyView(Protocol):
    """What a backend shows `affine_candidates` of one service's queued jobs available now; every
    list is in rank order (ties: available first, then submitted first)."""

    def starved(self, before: float, n: int) -> list[Job]:
        """Up to `n` jobs of any model that became available at or before `before`."""
        ...

    def of_model(self, model: str | None, n: int) -> list[Job]:
        """Up to `n` jobs naming `model` (None: naming none; a backend may look for those among the
        first NO_MODEL_WINDOW by rank only)."""
        ...

    def first(self) -> Job | None:
        """The job of lowest rank, of any model."""
        ...


NO_MODEL_WINDOW = 64  # jobs, at least 4 per slot, searched for ones that name no model (no index)


def affine_candidates(
    view: ReadyView, models: Sequence[str], n: int, starved_before: float | None, policy: RetryPolicy
) -> list[Job]:
    """A model-affine lease's candidates, in the order they are leased (see `QueueBackend.lease`):
    jobs that have waited since `starved_before` (any model) first, then jobs of the `models` the
    worker holds; only when neither exists, the lowest-ranked job and more of its model, so a
    worker loads at most one checkpoint per lease. Every backend decides through this function.
    Batch jobs (`Priority.BATCH`) rank behind every interactive job: a held model's batch job is
    not taken while an interactive job of any model waits (the lowest-ranked job goes instead)."""
    taken = view.starved(starved_before, n) if starved_before is not None else []
    if len(taken) < n:
        seen = {job.id for job in taken}
        held = [j for m in dict.fromkeys(models) for j in view.of_model(m, n) if j.id not in seen]
        taken += sorted(held, key=lambda job: ready_key(job, policy))[: n - len(taken)]
    top = view.first() if taken and taken[0].priority is Priority.BATCH else None
    if taken and (top is None or top.priority is Priority.BATCH):
        return taken
    top = top or view.first()
    if top is None:
        return []
    same = [job for job in view.of_model(top.model, n) if job.id != top.id]
    return [top, *same[: n - 1]]


def interactive_waiting(view: ReadyView, models: Sequence[str | None] = ()) -> bool:
    """Whether a job that is not `batch` is available now: of one of `models`, or of any model when
    none are given. One read per model: batch jobs rank behind every other, so the first job by rank
    is interactive exactly when any is. What a worker running batch work asks before it hands it
    back (`QueueBackend.interactive_waiting`)."""
    if not models:
        first = view.first()
        return first is not None and first.priority is not Priority.BATCH
    return any(
        job.priority is not Priority.BATCH for m in dict.fromkeys(models) for job in view.of_model(m, 1)
    )


def ready_key(job: Job, policy: RetryPolicy) -> tuple[float, float, float]:
    """The order every backend leases queued jobs in: rank, then availability, then creation."""
    return (job.rank(policy), job.available_at, job.created_at)


def affine_key(
    job: Job, policy: RetryPolicy, starved_before: float | None
) -> tuple[bool, float, float, float]:
    """`affine_candidates`' order as a sort key: starved jobs first, then by `ready_key` (a lease
    gathered over several rounds is put back in it)."""
    starved = starved_before is not None and job.available_at <= starved_before
    return (not starved, *ready_key(job, policy))


def starve_limit(now: float, starve_after: float | None) -> float | None:
    """The latest availability a starved job can have, or None without a starvation guard."""
    return None if starve_after is None else now - starve_after


def fit_batch(candidates: Sequence[Job], max_jobs: int, taken: Sequence[Job] = ()) -> list[Job]:
    """The candidates (in their order) that join `taken` in one lease of at most `max_jobs`, so that
    no job is leased with more jobs than its `batch_limit` allows. A job that does not fit is
    skipped, not waited for: it stays queued, first in line for the next lease."""
    cap = min([max_jobs, *(job.batch_limit for job in taken if job.batch_limit is not None)])
    size, chosen = len(taken), []
    for job in candidates:
        limit = cap if job.batch_limit is None else min(cap, job.batch_limit)
        if size < limit:
            chosen.append(job)
            size, cap = size + 1, limit
        if size >= cap:
            break
    return chosen


def idempotency_conflict(job: Job, spec: JobSpec) -> Conflict:
    return Conflict(
        f"idempotency key {spec.idempotency_key!r} was used for a different request (job {job.id}); "
        "use a new key for a new request",
        field="idempotency_key",
    )


def unknown_cursor(job_id: str) -> ValidationError:
    return ValidationError(f"cursor {job_id!r} names no job", field="cursor")


def only(outcomes: Sequence[T | Exception]) -> T:
    """The one outcome of a batch of one, raising it when it is an error."""
    (outcome,) = outcomes
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class OneAtATime(ABC):
    """`submit`, `complete` and `fail` as batches of one, for a backend whose `submit_many` and
    `settle` do the work (a backend may still override any of them)."""

    @abstractmethod
    def submit_many(
        self, specs: Sequence[JobSpec], *, limits: Mapping[str, int] | None = None
    ) -> list[Submitted | SwellError]:
        """As `QueueBackend.submit_many`: one answer per spec, in order."""

    @abstractmethod
    def settle(self, owner: str, outcomes: Sequence[Outcome]) -> list[Job | SwellError]:
        """As `QueueBackend.settle`: one settled job or error per outcome, in order."""

    def submit(self, spec: JobSpec, *, limit: int | None = None) -> Submitted:
        return only(self.submit_many([spec], limits=None if limit is None else {spec.service: limit}))

    def complete(self, job_id: str, owner: str, result: dict[str, Any]) -> Job:
        return only(self.settle(owner, [Outcome(job_id, result=result)]))

    def fail(self, job_id: str, owner: str, error: str, *, retryable: bool = True) -> Job:
        return only(self.settle(owner, [Outcome.failure(job_id, error, retryable=retryable)]))


def lease_expired(job: Job, now: float) -> bool:
    return job.state is JobState.LEASED and job.lease_expires_at is not None and job.lease_expires_at <= now


def retry_after(excess: int, finished_in_window: int, window: float = ADMISSION_WINDOW) -> float:
    """Seconds until `excess` places free up at the service's recent completion rate, 1 s to 30 s.

    `finished_in_window` is how many of the service's jobs reached a final state in the last
    `window` seconds; with none, nothing suggests the queue drains soon and the answer is the cap.
    """
    if finished_in_window <= 0:
        return MAX_RETRY_AFTER
    rate = finished_in_window / window
    return min(MAX_RETRY_AFTER, max(1.0, excess / rate))


def full_message(service: str, active: int, limit: int) -> str:
    return f"service {service!r} has {active} jobs queued or running (limit {limit})"


@dataclass(slots=True)
class Counters:
    """The cumulative counters of `QueueStats`, kept by backends that count in-process."""

    submitted: int = 0
    deduplicated: int = 0
    rejected: int = 0
    leased: int = 0
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    expired: int = 0
    split: int = 0
    redriven: int = 0

    def count_final(self, job: Job) -> None:
        """Count a job that has just reached `succeeded`, `failed` or `dead`."""
        if job.state is JobState.SUCCEEDED:
            self.succeeded += 1
        elif job.state is JobState.FAILED:
            self.failed += 1
        elif job.state is JobState.DEAD:
            self.dead += 1

    def snapshot(self, depth: dict[str, dict[str, int]]) -> QueueStats:
        return QueueStats(**{f.name: getattr(self, f.name) for f in fields(self)}, depth=depth)


COUNTER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Counters))


@contextlib.contextmanager
def translated_failures(
    errors: type[BaseException] | tuple[type[BaseException], ...],
    unavailable: Callable[[Any], Unavailable | None],
) -> Iterator[None]:
    """Raise `unavailable(exc)` for the `errors` raised inside that it recognises as storage failures
    (a backend's boundary: a full disk, a server that refuses); let the others (bugs) pass as they are."""
    try:
        yield
    except errors as exc:
        failure = unavailable(exc)
        if failure is None:
            raise
        raise failure from exc


# -- the outbox: rules every backend shares ---------------------------------------------------------


def delivery_rows(job: Job, spec: JobSpec) -> list[Delivery]:
    """The outbox rows a new job's submit makes, one per `DeliverySpec`, all WAITING."""
    return [Delivery.create(job.id, d, job.created_at) for d in spec.delivery_specs]


def stepped(rows: Sequence[Delivery], step: DeliveryStep | None, now: float) -> list[Delivery]:
    """The rows that `step` (of the job's transition, at `now`) changes, each at its next version."""
    if step is None:
        return []
    changed = [row.armed(now) if step is DeliveryStep.ARM else row.rearmed() for row in rows]
    return [
        dataclasses.replace(new, version=old.version + 1)
        for old, new in zip(rows, changed, strict=True)
        if new != old
    ]


def saved(stored: Delivery, delivery: Delivery) -> Delivery | None:
    """What `save_delivery(delivery)` stores over `stored`: its mutable fields at the next version,
    or None when `stored` changed since `delivery` was read (a re-drive, another dispatcher)."""
    if stored.version != delivery.version:
        return None
    return dataclasses.replace(
        stored,
        state=delivery.state,
        attempts=delivery.attempts,
        next_at=delivery.next_at,
        error=delivery.error,
        progress_seq=delivery.progress_seq,
        version=stored.version + 1,
    )


def missing_delivery(delivery: Delivery) -> JobNotFound:
    return JobNotFound(f"no {delivery.channel} delivery for job {delivery.job_id!r}", field="id")
