"""How a worker lives through storage that fails for a while: a full disk, a locked or lost database.

Backends raise `Unavailable` for a storage failure (and the filesystem raises OSError); neither is
the job's fault, so the worker neither fails the job nor exits. It backs off (bounded exponential),
keeps the outcomes it could not record in a `Ledger` and records them once storage answers again;
a job whose lease ran out meanwhile ran elsewhere, and the queue answers `LeaseLost` for it.
Each kind of failure is logged once per outage, not once per retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from swell.core.errors import LeaseLost, Unavailable
from swell.core.jobs import Job, JobState
from swell.queue.base import Outcome, QueueBackend, Update

log = logging.getLogger("swell.worker")

STORAGE_ERRORS: tuple[type[Exception], ...] = (Unavailable, OSError)
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 5.0


@dataclass
class Backoff:
    """Bounded exponential delays: `first`, doubling up to `cap`; `reset` after a success."""

    first: float = BACKOFF_FIRST
    cap: float = BACKOFF_CAP
    _next: float = 0.0

    def next(self) -> float:
        delay = self._next or self.first
        self._next = min(self.cap, delay * 2)
        return delay

    def reset(self) -> None:
        self._next = 0.0


@dataclass
class Complaints:
    """Logs a failure the first time its kind is seen, and once more when things work again."""

    what: str
    seen: set[str] = field(default_factory=set)

    def failed(self, exc: BaseException) -> None:
        kind = _kind(exc)
        if kind not in self.seen:
            self.seen.add(kind)
            log.warning("%s failed (%s); retrying", self.what, " ".join(f"{kind}: {exc}".split()))

    def worked(self) -> None:
        if self.seen:
            log.warning("%s works again", self.what)
            self.seen.clear()


def _kind(exc: BaseException) -> str:
    errno = getattr(exc, "errno", None)
    return f"{type(exc).__name__}[{errno}]" if errno is not None else type(exc).__name__


@dataclass
class WorkerCounters:
    """What this worker's settled outcomes came to, and whether it is running a batch now."""

    jobs_done: int = 0
    jobs_failed: int = 0
    jobs_handed_back: int = 0  # sent back untouched from a batch that failed as a whole
    jobs_cancelled: int = 0  # stopped on a cancel request
    busy: bool = False


@dataclass
class Ledger:
    """The queue calls of one worker that must survive a storage outage: settle, renew, report and
    the cancel poll."""

    queue: QueueBackend
    owner: str
    counters: WorkerCounters = field(default_factory=WorkerCounters)
    pending: list[Outcome] = field(default_factory=list)
    last_ok: float = field(default_factory=time.monotonic)  # when storage last answered
    complaints: Complaints = field(default_factory=lambda: Complaints("the queue"))

    def settle(self, outcomes: Sequence[Outcome]) -> bool:
        """Record `outcomes` (with any kept from before) in one queue call; keep them when storage
        fails. True when nothing is left unrecorded."""
        self.pending.extend(outcomes)
        return self.flush()

    def flush(self) -> bool:
        """Try to record the outcomes kept from an outage; True when none is left."""
        if not self.pending:
            return True
        try:
            answers = self.queue.settle(self.owner, self.pending)
        except STORAGE_ERRORS as exc:
            self.complaints.failed(exc)
            return False
        self._count(self.pending, answers)
        self.pending = []
        self.answered()
        return True

    def renew(self, job_ids: Sequence[str], lease_seconds: float) -> set[str]:
        """Extend the leases on `job_ids`; return those lost. A storage failure loses none: the
        leases may still hold, and the next renewal tries again."""
        if not job_ids:
            return set()
        try:
            self.queue.renew(job_ids, self.owner, lease_seconds)
        except LeaseLost:
            return {job_id for job_id in job_ids if not self._renew_one(job_id, lease_seconds)}
        except STORAGE_ERRORS as exc:
            self.complaints.failed(exc)
            return set()
        self.answered()
        return set()

    def report(self, updates: Sequence[Update]) -> bool:
        """Send what running jobs reported (progress, text); False when storage failed, and the
        caller keeps them for the next try."""
        if not updates:
            return True
        try:
            self.queue.report(self.owner, updates)
        except STORAGE_ERRORS as exc:
            self.complaints.failed(exc)
            return False
        self.answered()
        return True

    def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        """Those of `job_ids` whose cancel was requested; none when storage fails (asked again soon)."""
        if not job_ids:
            return set()
        try:
            found = self.queue.cancel_requested(job_ids)
        except STORAGE_ERRORS as exc:
            self.complaints.failed(exc)
            return set()
        self.answered()
        return set(found)

    def answered(self) -> None:
        """Storage just answered a call."""
        self.last_ok = time.monotonic()
        self.complaints.worked()

    def drain(self, lease_seconds: float, backoff: Backoff | None = None) -> bool:
        """Before the worker exits: retry the kept outcomes until recorded, or until the leases
        renewed when storage last answered have run out (their jobs then belong to the queue again)."""
        backoff = backoff or Backoff()
        while not self.flush():
            left = self.last_ok + lease_seconds - time.monotonic()
            if left <= 0:
                log.warning("gave up recording %d outcomes: storage stayed down", len(self.pending))
                return False
            time.sleep(min(backoff.next(), left))
        return True

    def _renew_one(self, job_id: str, lease_seconds: float) -> bool:
        try:
            self.queue.renew([job_id], self.owner, lease_seconds)
        except LeaseLost:
            return False
        except STORAGE_ERRORS:
            return True
        return True

    def _count(self, outcomes: Sequence[Outcome], answers: Sequence[Job | Exception]) -> None:
        for sent, answer in zip(outcomes, answers, strict=False):
            if not isinstance(answer, Job):
                continue  # the lease was lost: the job ran elsewhere
            if answer.state is JobState.SUCCEEDED:
                self.counters.jobs_done += 1
            elif answer.state is JobState.CANCELLED:
                self.counters.jobs_cancelled += 1
            elif sent.split is not None and answer.state is JobState.QUEUED:
                self.counters.jobs_handed_back += 1
            else:
                self.counters.jobs_failed += 1
