"""Jobs and their lifecycle, held as data.

The lifecycle is one transition table (as h11 keeps HTTP's states) and one `apply`:

    queued ──lease──▶ leased ──succeed──▶ succeeded
      │  ▲              │ ├───fail──────▶ failed      (a permanent error: bad input)
      │  │              │ ├───bury──────▶ dead        (out of attempts; kept with its last error)
      │  │              │ ├─retry/release/expire─▶ queued
      │  │              │ └─handback───▶ queued       (its batch failed as a whole: split, not counted)
      │  │              │ └─cancel────▶ cancelled   (the worker stopped it at a cancel request)
      │  └──redrive──── dead | failed | cancelled     (an operator tries it again from the start)
      └──cancel──▶ cancelled

Backends only persist what `apply` decides; an event the table does not hold raises
`IllegalTransition` instead of overwriting anything.

Cancelling a running job. A client cannot take a job away from the worker that holds it: a cancel of
a leased job only raises `cancel_requested` (`request_cancel`), which the worker sees between steps
and answers by settling the job `cancelled`. Until then the job stays leased; should the delivery end
any other way that would queue it again (a retry, a release, an expired lease, a hand-back), it ends
`cancelled` instead, so a job the client gave up on never runs again. A result that arrives first
still wins: the work is done.

What happened to a job is also kept as an event log (`JobEvent`): one `state` event per transition,
appended by the backend in the transaction of the transition (`state_event_data` decides its data),
plus the `progress` and `delta` events a worker reports and a `cancel` event per request.

Deliveries. Where a job's outcome goes besides the API (a webhook, a Discord follow-up) is an
outbox of `Delivery` rows, one per (job, channel), made from the spec's `DeliverySpec`s with the
job; backends arm them in the atomic step of the final transition and re-arm them on a re-drive
(`delivery_step` decides which), and one dispatcher (`swell.gateway.outbox`) works them off.

Batches. A job leased together with others remembers how many (`leased_with`). When the batch
fails as a whole (it ran past its deadline, the worker crashed or its lease expired), the failure is
not the job's own: it goes back untouched with `batch_limit` halved, so a slow or poisonous job ends
up alone and then fails only itself. Each such hand-back must shrink the batch the job may be leased
with, so a job is handed back at most log2(batch size) times before its attempts count again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from swell.core.errors import IllegalTransition, LeaseLost, ValidationError


class JobState(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD, JobState.CANCELLED})


class Event(StrEnum):
    LEASE = "lease"  # a worker takes the job
    SUCCEED = "succeed"  # the engine returned a result
    FAIL = "fail"  # a permanent error: retrying cannot help
    RETRY = "retry"  # a transient error, attempts left: back to the queue after a back-off
    BURY = "bury"  # an error with no attempts left: dead letter
    RELEASE = "release"  # a draining worker hands the job back untouched
    EXPIRE = "expire"  # the lease ran out (the worker died or hung)
    CANCEL = "cancel"  # the client gave up on a queued job, or a worker stopped a job at its request
    HANDBACK = "handback"  # the job's batch failed as a whole: back untouched, to a smaller batch
    REDRIVE = "redrive"  # an operator re-drives a dead, failed or cancelled job


TRANSITIONS: dict[tuple[JobState, Event], JobState] = {
    (JobState.QUEUED, Event.LEASE): JobState.LEASED,
    (JobState.QUEUED, Event.CANCEL): JobState.CANCELLED,
    (JobState.LEASED, Event.SUCCEED): JobState.SUCCEEDED,
    (JobState.LEASED, Event.FAIL): JobState.FAILED,
    (JobState.LEASED, Event.RETRY): JobState.QUEUED,
    (JobState.LEASED, Event.BURY): JobState.DEAD,
    (JobState.LEASED, Event.RELEASE): JobState.QUEUED,
    (JobState.LEASED, Event.EXPIRE): JobState.QUEUED,
    (JobState.LEASED, Event.HANDBACK): JobState.QUEUED,
    (JobState.LEASED, Event.CANCEL): JobState.CANCELLED,
    (JobState.DEAD, Event.REDRIVE): JobState.QUEUED,
    (JobState.FAILED, Event.REDRIVE): JobState.QUEUED,
    (JobState.CANCELLED, Event.REDRIVE): JobState.QUEUED,
}


def next_state(state: JobState, event: Event) -> JobState:
    """The state `event` leads to from `state`, or `IllegalTransition`."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"cannot {event.value} a job that is {state.value}") from None


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"
    BATCH = "batch"  # offline work: leased only when no interactive job waits, never aged ahead


BATCH_RANK_OFFSET = 1e10  # seconds (~317 years): a batch job ranks behind every interactive one


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential back-off between deliveries, and the aging that keeps low priority from starving.

    A job's `rank` is the time it became available shifted by its priority: `high` jumps
    `aging_seconds` ahead, `low` waits `aging_seconds` behind. Workers take the lowest rank first,
    so a low job that has waited `2 * aging_seconds` beats a high job that just arrived. A `batch`
    job waits `BATCH_RANK_OFFSET` behind: it is leased only when no interactive job is available,
    and it is never a starved job (it ranks far above any starvation bound).
    """

    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    aging_seconds: float = 60.0

    def backoff(self, attempts: int) -> float:
        """Seconds to wait before delivery number `attempts + 1`."""
        return min(self.backoff_cap, self.backoff_base * 2 ** max(0, attempts - 1))

    def rank(self, available_at: float, priority: Priority) -> float:
        offset = {
            Priority.HIGH: -self.aging_seconds,
            Priority.NORMAL: 0.0,
            Priority.LOW: self.aging_seconds,
            Priority.BATCH: BATCH_RANK_OFFSET,
        }
        return available_at + offset[priority]


def new_job_id() -> str:
    return uuid.uuid4().hex


def request_fingerprint(input: dict[str, Any], model: str | None) -> str:
    """sha256 of the canonical JSON of what a job asks for (its input and model): two submits with
    one idempotency key are the same request exactly when their fingerprints are equal."""
    canonical = json.dumps(
        {"input": input, "model": model}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class DeliverySpec:
    """Where a job's outcome goes once it is final, besides the API: a `channel` (`webhook`,
    `discord`, ...) and its JSON-able `target` (`{"url": ...}` for a webhook). `expires_at`: the
    target stops accepting at this time (a Discord interaction token lives 15 minutes)."""

    channel: str
    target: Mapping[str, Any]
    expires_at: float | None = None


WEBHOOK = "webhook"  # the channel a `callback_url` is delivered through


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a client asks for; validated by the gateway before it reaches a queue.

    `callback_url` is the webhook's target: `delivery_specs` adds it to `deliveries` as
    `DeliverySpec("webhook", {"url": callback_url})`. A job has at most one delivery per channel
    (`ValidationError` on field `deliveries` otherwise)."""

    service: str
    input: dict[str, Any]
    priority: Priority = Priority.NORMAL
    idempotency_key: str | None = None
    callback_url: str | None = None
    tenant: str | None = None
    model: str | None = None  # the checkpoint the job needs, for model-affine leasing
    max_attempts: int = 3
    timeout: float = 300.0  # seconds a single delivery may run
    deliveries: tuple[DeliverySpec, ...] = ()

    def __post_init__(self) -> None:
        channels = [d.channel for d in self.delivery_specs]
        if len(channels) != len(set(channels)):
            raise ValidationError(
                f"a job takes one delivery per channel, not {', '.join(sorted(channels))}", field="deliveries"
            )

    @property
    def delivery_specs(self) -> tuple[DeliverySpec, ...]:
        """`deliveries`, with the webhook of `callback_url` first when there is one."""
        if self.callback_url is None:
            return tuple(self.deliveries)
        return (DeliverySpec(WEBHOOK, {"url": self.callback_url}), *self.deliveries)

    def fingerprint(self) -> str:
        return request_fingerprint(self.input, self.model)


@dataclass(frozen=True, slots=True)
class Job:
    """A job as a backend stores it. Immutable: every change is a new value from `apply`."""

    id: str
    service: str
    input: dict[str, Any]
    priority: Priority
    state: JobState
    created_at: float
    available_at: float  # not delivered before this time (back-off)
    max_attempts: int
    timeout: float
    attempts: int = 0  # deliveries so far
    idempotency_key: str | None = None
    callback_url: str | None = None
    tenant: str | None = None
    model: str | None = None
    started_at: float | None = None  # start of the latest delivery
    finished_at: float | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    batch_limit: int | None = None  # the most jobs this job may be leased together with (None: no cap)
    leased_with: int = 0  # how many jobs were in the lease that took it last (itself included)
    fingerprint: str | None = None  # `request_fingerprint` of a job with an idempotency key
    progress: float | None = None  # the latest fraction done the worker reported for this delivery
    progress_message: str | None = None
    cancel_requested: bool = False  # the client asked to cancel it while a worker held it

    @classmethod
    def create(cls, spec: JobSpec, now: float, job_id: str | None = None) -> Job:
        return cls(
            id=job_id or new_job_id(),
            service=spec.service,
            input=spec.input,
            priority=Priority(spec.priority),
            state=JobState.QUEUED,
            created_at=now,
            available_at=now,
            max_attempts=spec.max_attempts,
            timeout=spec.timeout,
            idempotency_key=spec.idempotency_key,
            callback_url=spec.callback_url,
            tenant=spec.tenant,
            model=spec.model,
            fingerprint=spec.fingerprint() if spec.idempotency_key is not None else None,
        )

    def same_request(self, spec: JobSpec) -> bool:
        """Whether `spec` asks for what this job was submitted with (a job stored before
        fingerprints were kept is fingerprinted from its stored input and model)."""
        stored = self.fingerprint or request_fingerprint(self.input, self.model)
        return stored == spec.fingerprint()

    def rank(self, policy: RetryPolicy) -> float:
        return policy.rank(self.available_at, self.priority)

    # -- transitions: pure, each returns the job after the event ----------------------------------

    def lease(self, owner: str, now: float, lease_seconds: float, *, batch: int = 1) -> Job:
        """Taken by `owner` in a lease of `batch` jobs (this one included)."""
        self._check(Event.LEASE)
        return dataclasses.replace(
            self,
            state=JobState.LEASED,
            attempts=self.attempts + 1,
            started_at=now,
            lease_owner=owner,
            lease_expires_at=now + lease_seconds,
            leased_with=batch,
            progress=None,
            progress_message=None,
        )

    def succeed(self, result: dict[str, Any], now: float) -> Job:
        self._check(Event.SUCCEED)
        done = None if self.progress is None else 1.0
        return self._finish(JobState.SUCCEEDED, now, result=result, error=None, progress=done)

    def fail(self, error: str, now: float, *, retryable: bool, policy: RetryPolicy) -> Job:
        """A delivery failed: back to the queue after a back-off, dead when out of attempts,
        failed at once when the error is permanent."""
        if not retryable:
            self._check(Event.FAIL)
            return self._finish(JobState.FAILED, now, error=error)
        return self._retry_or_bury(error, now, policy, Event.RETRY)

    def expire(self, now: float, policy: RetryPolicy) -> Job:
        """The lease ran out: the worker died or hung. A job leased with others goes back untouched,
        to a batch half the size (any of them may be the cause); a job leased alone counts it."""
        error = f"lease of {self.lease_owner} expired during attempt {self.attempts}"
        if self.leased_with > 1:
            return self._hand_back(f"{error} (in a batch of {self.leased_with})", now, self.leased_with // 2)
        return self._retry_or_bury(error, now, policy, Event.EXPIRE)

    def handback(self, error: str, now: float, *, batch_limit: int, policy: RetryPolicy) -> Job:
        """The job's batch failed as a whole (timed out, crashed). When `batch_limit` is smaller than
        the lease that took it, the job goes back untouched to be leased with at most that many;
        otherwise no smaller batch is left to try and it is the job's own retryable failure. Either
        way `batch_limit` only ever tightens."""
        limit = max(1, batch_limit if self.batch_limit is None else min(self.batch_limit, batch_limit))
        if limit >= self.leased_with:
            failed = self.fail(error, now, retryable=True, policy=policy)
            return dataclasses.replace(failed, batch_limit=limit)
        return self._hand_back(error, now, limit)

    def redrive(self, now: float) -> Job:
        """Back to the queue from dead, failed or cancelled, as if just submitted: attempts, batch
        limit start over (its deliveries are re-armed by the backend, see `Delivery.rearmed`); the
        last error stays until a delivery replaces it."""
        self._check(Event.REDRIVE)
        return dataclasses.replace(
            self,
            state=JobState.QUEUED,
            attempts=0,
            available_at=now,
            finished_at=None,
            result=None,
            lease_owner=None,
            lease_expires_at=None,
            batch_limit=None,
            progress=None,
            progress_message=None,
            cancel_requested=False,
        )

    def release(self, now: float) -> Job:
        """A draining worker hands the job back; the delivery does not count against it (a job
        whose cancel was requested is cancelled instead)."""
        self._check(Event.RELEASE)
        return self._requeue_uncounted(now)

    def cancel(self, now: float) -> Job:
        """Cancelled: a queued job at once, a leased one when its worker stops it."""
        self._check(Event.CANCEL)
        return self._finish(JobState.CANCELLED, now, error="cancelled by the client")

    def request_cancel(self) -> Job:
        """Ask the worker holding the job to stop it; the job stays leased until it does (a second
        request changes nothing). `IllegalTransition` unless the job is leased."""
        if self.state is not JobState.LEASED:
            raise IllegalTransition(f"cannot request a cancel of a job that is {self.state.value}")
        return self if self.cancel_requested else dataclasses.replace(self, cancel_requested=True)

    def with_progress(self, fraction: float | None, message: str | None) -> Job:
        """The job with the progress its worker reported (a missing part keeps its last value);
        fractions are clamped to 0..1."""
        if fraction is not None:
            fraction = min(1.0, max(0.0, float(fraction)))
        return dataclasses.replace(
            self,
            progress=self.progress if fraction is None else fraction,
            progress_message=self.progress_message if message is None else message,
        )

    def renew(self, owner: str, now: float, lease_seconds: float) -> Job:
        if self.state is not JobState.LEASED or self.lease_owner != owner:
            raise LeaseLost(f"job {self.id} is no longer leased to {owner}")
        return dataclasses.replace(self, lease_expires_at=now + lease_seconds)

    # -- helpers ----------------------------------------------------------------------------------

    def _check(self, event: Event) -> None:
        next_state(self.state, event)

    def _hand_back(self, error: str, now: float, batch_limit: int) -> Job:
        self._check(Event.HANDBACK)
        return self._requeue_uncounted(now, error=error, batch_limit=batch_limit)

    def _requeue_uncounted(self, now: float, **changes: Any) -> Job:
        """Back to the queue at once, the delivery not counted (a release, a hand-back); a job whose
        cancel was requested is cancelled instead."""
        if self.cancel_requested:
            return self.cancel(now)
        return dataclasses.replace(
            self,
            state=JobState.QUEUED,
            attempts=max(0, self.attempts - 1),
            available_at=now,
            lease_owner=None,
            lease_expires_at=None,
            **changes,
        )

    def _retry_or_bury(self, error: str, now: float, policy: RetryPolicy, event: Event) -> Job:
        if self.cancel_requested:
            return self.cancel(now)
        if self.attempts >= self.max_attempts:
            self._check(Event.BURY)
            return self._finish(JobState.DEAD, now, error=error)
        self._check(event)
        return dataclasses.replace(
            self,
            state=JobState.QUEUED,
            available_at=now + policy.backoff(self.attempts),
            lease_owner=None,
            lease_expires_at=None,
            error=error,
        )

    def _finish(self, state: JobState, now: float, **changes: Any) -> Job:
        return dataclasses.replace(
            self, state=state, finished_at=now, lease_owner=None, lease_expires_at=None, **changes
        )

    def to_public(self) -> dict[str, Any]:
        """The job as the API shows it."""
        body: dict[str, Any] = {
            "id": self.id,
            "service": self.service,
            "state": self.state.value,
            "priority": self.priority.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
        for key in ("tenant", "model", "idempotency_key", "callback_url"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        if self.result is not None:
            body["result"] = self.result
        if self.error is not None:
            body["error"] = self.error
        if self.progress is not None:
            body["progress"] = {"fraction": self.progress}
            if self.progress_message is not None:
                body["progress"]["message"] = self.progress_message
        if self.cancel_requested:
            body["cancel_requested"] = True
        return body


# -- deliveries: the outbox -------------------------------------------------------------------------


class DeliveryState(StrEnum):
    WAITING = "waiting"  # the job is not final yet
    PENDING = "pending"  # final; a try is due at `next_at`
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up: out of attempts, or a permanent refusal
    EXPIRED = "expired"  # the target stopped accepting before the outcome reached it

    @property
    def final(self) -> bool:
        return self in (DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.EXPIRED)


MIN_RETRY_AFTER = 0.25  # seconds: the shortest wait a rate-limited target gets (no hot loop on 0)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One row of the outbox: where one job's outcome goes through one channel, and how far it got.

    A row is made with its job (WAITING), armed (PENDING, due now) in the atomic step of the job's
    final transition, and re-armed (`rearmed`: WAITING, attempts reset) when the job is re-driven;
    the dispatcher records each try through the pure transitions below. `version` guards a save:
    a backend stores a row only while its stored `version` is still the one this value was read
    with, and bumps it, so a try that ends after the job was re-driven cannot overwrite the new
    round (see `Outbox.save_delivery`).

        waiting ──job final──▶ pending ──delivered──▶ delivered
           │  ▲                  │  ▲ └──failed, out of attempts / permanent──▶ failed
           │  └────redrive──── (any)└─failed: back-off, or the target's retry_after
           └──expired (the target's time ran out while the job ran)──▶ expired ◀── pending, too late
    """

    job_id: str
    channel: str
    target: Mapping[str, Any]
    state: DeliveryState
    attempts: int = 0  # tries counted against the dispatcher's max (rate-limited ones are not)
    next_at: float | None = None
    error: str | None = None
    expires_at: float | None = None
    created_at: float = 0.0
    progress_seq: int = 0  # the last job event seq the channel was shown (progress edits)
    version: int = 0  # bumped by every write the backend stores

    @classmethod
    def create(cls, job_id: str, spec: DeliverySpec, now: float) -> Delivery:
        return cls(
            job_id=job_id,
            channel=spec.channel,
            target=dict(spec.target),
            state=DeliveryState.WAITING,
            expires_at=spec.expires_at,
            created_at=now,
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.job_id, self.channel)

    def armed(self, now: float) -> Delivery:
        """The job turned final: a WAITING row is due now; any other is left as it is."""
        if self.state is not DeliveryState.WAITING:
            return self
        return dataclasses.replace(self, state=DeliveryState.PENDING, next_at=now)

    def rearmed(self) -> Delivery:
        """The job was re-driven: the row waits for its next final state, as if just made."""
        return dataclasses.replace(
            self, state=DeliveryState.WAITING, attempts=0, next_at=None, error=None, progress_seq=0
        )

    def delivered(self, now: float) -> Delivery:
        return dataclasses.replace(
            self, state=DeliveryState.DELIVERED, attempts=self.attempts + 1, next_at=None, error=None
        )

    def failed(
        self,
        error: str,
        now: float,
        max_attempts: int,
        policy: RetryPolicy,
        retry_after: float | None = None,
    ) -> Delivery:
        """A try failed. With `retry_after` (the target rate-limited it) the row is due again then
        and the try is not counted, so rate limits never use up a follow-up's attempts; otherwise it
        counts, and the row backs off or, out of `max_attempts`, fails for good."""
        if retry_after is not None:
            wait = max(MIN_RETRY_AFTER, retry_after)
            return dataclasses.replace(self, state=DeliveryState.PENDING, next_at=now + wait, error=error)
        attempts = self.attempts + 1
        if attempts >= max_attempts:
            return dataclasses.replace(
                self, state=DeliveryState.FAILED, attempts=attempts, next_at=None, error=error
            )
        return dataclasses.replace(
            self,
            state=DeliveryState.PENDING,
            attempts=attempts,
            next_at=now + policy.backoff(attempts),
            error=error,
        )

    def expired(self) -> Delivery:
        error = self.error or "the target expired before the job's outcome reached it"
        return dataclasses.replace(self, state=DeliveryState.EXPIRED, next_at=None, error=error)

    def progressed(self, seq: int) -> Delivery:
        """The channel was shown the job's progress up to event `seq`."""
        return dataclasses.replace(self, progress_seq=max(self.progress_seq, seq))

    def to_public(self) -> dict[str, Any]:
        """The row as the API shows it (the target stays private: it may hold a token)."""
        return {"state": self.state.value, "attempts": self.attempts, "error": self.error}


class DeliveryStep(StrEnum):
    ARM = "arm"  # the job turned final: its WAITING rows are due now (`Delivery.armed`)
    REARM = "rearm"  # a final job was re-driven: every row waits again (`Delivery.rearmed`)


def delivery_step(before: Job | None, after: Job) -> DeliveryStep | None:
    """What storing `after` in place of `before` does to the job's deliveries, in the same atomic
    step: arm them when it turns final, re-arm them when it leaves a final state; None otherwise."""
    was_final = before is not None and before.state.final
    if after.state.final and not was_final and before is not None:
        return DeliveryStep.ARM
    if was_final and not after.state.final:
        return DeliveryStep.REARM
    return None


# -- the event log ----------------------------------------------------------------------------------


class EventKind(StrEnum):
    STATE = "state"  # a transition: {state, attempt, service, error?} (+ the job's times when final)
    PROGRESS = "progress"  # the worker's progress: {fraction, message?, preview?: a result file name}
    DELTA = "delta"  # a streamed piece of output text: {text} (completion 0) or {text, index}
    CANCEL = "cancel"  # the client asked to cancel the job while a worker held it: {}


ACTIVITY_KINDS = frozenset({EventKind.PROGRESS, EventKind.DELTA})  # trimmed once the job is final and old


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One entry of a job's history. `seq` orders every event of one queue (a cursor: a reader
    that resumes after the last `seq` it saw misses none and sees none twice); `at` is the
    queue clock's time of the event."""

    seq: int
    job_id: str
    kind: str
    at: float
    data: dict[str, Any]

    def to_public(self) -> dict[str, Any]:
        return {"seq": self.seq, "job_id": self.job_id, "kind": self.kind, "at": self.at, "data": self.data}


def state_event_data(before: Job | None, after: Job) -> dict[str, Any] | None:
    """The data of the `state` event that storing `after` in place of `before` appends, or None
    when its state did not change (a renewal, progress, a webhook's bookkeeping).

    A final event carries the job's times, so a reader of finished jobs (the gateway's metrics)
    needs nothing else; an error is carried where it explains the new state."""
    if before is not None and before.state is after.state:
        return None
    data: dict[str, Any] = {"state": after.state.value, "attempt": after.attempts, "service": after.service}
    requeued = after.state is JobState.QUEUED and before is not None and before.state is JobState.LEASED
    explained = after.state in (JobState.FAILED, JobState.DEAD, JobState.CANCELLED) or requeued
    if explained and after.error is not None:
        data["error"] = after.error
    if after.state.final:
        data["created_at"] = after.created_at
        data["started_at"] = after.started_at
        data["finished_at"] = after.finished_at
    return data


def progress_event_data(job: Job, preview: str | None) -> dict[str, Any]:
    """The data of a `progress` event for a job that has just recorded its progress."""
    data: dict[str, Any] = {"fraction": job.progress if job.progress is not None else 0.0}
    if job.progress_message is not None:
        data["message"] = job.progress_message
    if preview is not None:
        data["preview"] = preview
    return data
