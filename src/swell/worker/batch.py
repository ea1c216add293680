"""One leased batch on its way through the engine: bisected when it fails as a whole, timed per call.

Two halves talk through a queue of events. `execute` runs in the engine thread: it calls the engine
on the whole batch and, when that call raises (or returns the wrong number of results, an engine
bug), calls it again on each half, recursively, so a poisonous input fails only itself and its
neighbours still succeed. With a spec's `batch_key`, a leased batch is first split into calls of
jobs with equal keys (one pipeline call per shape). `BatchRun` lives in the worker's main thread: it
turns the events into the outcomes to settle, knows the deadline of the call running now and, when
that passes, what to hand back. It does no I/O, so every rule here is testable without a queue or a
thread.

`Signals` is the one object both threads share: the engine thread leaves progress, text (per
completion: a `ChoiceSignals`) and preview images in it (`RunContext.progress`, `delta`) and asks it
whether a job was cancelled; the main thread takes what accumulated a few times a second to send in
one `queue.report`, and marks the jobs `queue.cancel_requested` names. A job whose cancel was seen
before it was settled ends `cancelled`, whatever the engine returned for it; one not yet started is
not run at all.

The deadline rule: an engine call on k jobs may run for the sum of their timeouts. A job's `timeout`
bounds one delivery of it alone; in a batch it also waits for the others, so a batch held to one
job's timeout kills jobs that would each have succeeded alone, and the sum is exactly what running
them one after another would be allowed. The price is that a hung call is noticed later in a larger
batch; the hand-back halves the batch each time (`Outcome.handback`, which does not count the
attempt), so a hanging input is alone after log2(n) rounds, and only then is its attempt counted.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swell.core.errors import ValidationError
from swell.core.jobs import Job
from swell.engines.base import Engine, JobCancelled, RunContext
from swell.engines.results import ResultStore
from swell.queue.base import Outcome
from swell.worker.models import ModelSet

BatchKey = Callable[[Mapping[str, Any]], Hashable]

log = logging.getLogger("swell.worker")

Result = dict[str, Any] | BaseException  # what the engine returned for one input


@dataclass(frozen=True, slots=True)
class Started:
    """The engine thread began a call on `jobs` at `at` (time.monotonic)."""

    jobs: tuple[Job, ...]
    at: float


@dataclass(frozen=True, slots=True)
class Finished:
    """A call returned: one result per job (a job reported early is left out of both)."""

    jobs: tuple[Job, ...]
    results: tuple[Result, ...]


@dataclass(frozen=True, slots=True)
class Reported:
    """The engine reported one job's final result before its call returned (`RunContext.report`)."""

    job: Job
    result: Result


@dataclass(frozen=True, slots=True)
class Exited:
    """The engine thread is done with the batch."""


@dataclass(frozen=True, slots=True)
class Loading:
    """The engine thread is loading checkpoint `model` for the calls that follow: no call runs, so
    no call's deadline counts until the next `Started` (a load is not a job's work)."""

    model: str | None
    at: float


@dataclass(frozen=True, slots=True)
class FirstText:
    """A job's first piece of streamed text came: the watcher sends it at once instead of with the
    next periodic report, so a streaming client's first token does not wait up to REPORT_SECONDS."""


Event = Started | Finished | Reported | Exited | Loading | FirstText


def call_deadline(jobs: Sequence[Job], started: float) -> float:
    """When a call on `jobs` that began at `started` is overdue: the sum of their timeouts later."""
    return started + math.fsum(job.timeout for job in jobs)


def outcome(job: Job, result: Result, *, cancelled: bool = False) -> Outcome:
    """A job's own result: bad input fails for good, any other error may pass on another try; a job
    whose cancel was requested ends cancelled."""
    if cancelled:
        return Outcome.cancelled(job.id)
    if isinstance(result, BaseException):
        error = one_line(result)
        return Outcome.failure(job.id, error, retryable=not isinstance(result, ValidationError))
    return Outcome(job.id, result=result)


def one_line(exc: BaseException) -> str:
    """`Type: message` on one line."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def split_by_model(jobs: Sequence[Job]) -> list[list[Job]]:
    """`jobs` in groups of one checkpoint (`Job.model`), in order of first appearance: an engine
    holds one model, so a call never mixes two."""
    groups: dict[str | None, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.model, []).append(job)
    return list(groups.values())


def split_by_key(jobs: Sequence[Job], key: BatchKey | None) -> list[list[Job]]:
    """`jobs` in calls of equal `key(input)`, in order of first appearance; one call without a key.
    A job whose key cannot be computed (or is unhashable) runs alone."""
    if key is None:
        return [list(jobs)] if jobs else []
    groups: dict[Hashable, list[Job]] = {}
    for job in jobs:
        try:
            group = key(job.input)
            hash(group)
        except Exception:
            group = (split_by_key, job.id)  # a key no engine returns: this job alone
        groups.setdefault(group, []).append(job)
    return list(groups.values())


# -- between the threads ------------------------------------------------------------------------


@dataclass
class Pending:
    """What the engine said about one job since the last report: the latest progress, and the text
    pieces of each completion (`texts`, by index: a job with `n` > 1 streams several)."""

    fraction: float | None = None
    message: str | None = None
    preview: bytes | None = None
    texts: dict[int, list[str]] = field(default_factory=dict)

    def merge_newer(self, newer: Pending) -> Pending:
        """This (older, not sent) followed by `newer`: newer progress wins, each completion's text
        is joined in order."""
        texts = {i: list(parts) for i, parts in self.texts.items()}
        for index, parts in newer.texts.items():
            texts.setdefault(index, []).extend(parts)
        return Pending(
            newer.fraction if newer.fraction is not None else self.fraction,
            newer.message if newer.message is not None else self.message,
            newer.preview if newer.preview is not None else self.preview,
            texts,
        )

    def joined(self) -> dict[int, str]:
        """Each completion's pending text in one piece, by index."""
        return {i: "".join(parts) for i, parts in sorted(self.texts.items()) if parts}


@dataclass
class Signals:
    """Progress, text and cancels shared by the engine thread and the main thread (module docstring)."""

    wake: Callable[[], None] | None = field(default=None, repr=False)  # called on a job's first text
    _pending: dict[str, Pending] = field(default_factory=dict)
    _cancelled: frozenset[str] = frozenset()
    _spoken: set[str] = field(default_factory=set, repr=False)  # jobs that have streamed text
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def progress(self, job_id: str, fraction: float, preview: bytes | None, message: str | None) -> None:
        with self._lock:
            pending = self._pending.setdefault(job_id, Pending())
            pending.fraction = fraction
            pending.message = message if message is not None else pending.message
            pending.preview = preview if preview is not None else pending.preview

    def delta(self, job_id: str, text: str) -> None:
        self.choice_delta(job_id, 0, text)

    def choice_delta(self, job_id: str, index: int, text: str) -> None:
        """The next piece of completion `index` of `job_id` (a `ChoiceSignals`); a bad index is the
        engine's bug, raised in its own call rather than in the report that would carry it."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"a completion index is an int from 0, not {index!r}")
        with self._lock:
            self._pending.setdefault(job_id, Pending()).texts.setdefault(index, []).append(text)
            first = job_id not in self._spoken
            self._spoken.add(job_id)
        if first and self.wake is not None:
            self.wake()

    def cancelled(self, job_id: str) -> bool:
        return job_id in self._cancelled  # one read of an immutable set: no lock

    def mark_cancelled(self, job_ids: set[str]) -> None:
        if not job_ids <= self._cancelled:
            self._cancelled = self._cancelled | job_ids

    @property
    def cancelled_ids(self) -> frozenset[str]:
        return self._cancelled

    def take(self, job_ids: set[str] | None = None) -> dict[str, Pending]:
        """What accumulated (for `job_ids` only, when given), leaving the rest."""
        with self._lock:
            if job_ids is None:
                taken, self._pending = self._pending, {}
                return taken
            return {j: self._pending.pop(j) for j in list(self._pending) if j in job_ids}

    def put_back(self, taken: dict[str, Pending]) -> None:
        """Return what could not be sent, before whatever came since."""
        with self._lock:
            for job_id, older in taken.items():
                newer = self._pending.get(job_id)
                self._pending[job_id] = older.merge_newer(newer) if newer is not None else older

    def drop(self, job_ids: set[str]) -> None:
        """Forget what is pending for jobs no longer held (settled, or their lease lost)."""
        with self._lock:
            for job_id in job_ids:
                self._pending.pop(job_id, None)

    def __bool__(self) -> bool:
        return bool(self._pending)


# -- the engine thread --------------------------------------------------------------------------


@dataclass
class Executor:
    """Runs one batch through `engine` in the engine thread, posting `Event`s to `events`."""

    engine: Engine
    data_dir: Path
    events: queue.SimpleQueue[Event]
    signals: Signals = field(default_factory=Signals)
    results: ResultStore | None = None  # None: files under data_dir
    batch_key: BatchKey | None = None
    reported: set[str] = field(default_factory=set)
    models: ModelSet | None = None  # several checkpoints: each call runs on its model's engine

    def run(self, jobs: Sequence[Job]) -> None:
        """Run `jobs` in calls of one model and equal batch key, halving every call that fails as a
        whole until each failure is one job's. Jobs cancelled before their call starts are not run."""
        try:
            groups = split_by_model(jobs) if self.models is not None and self.models.affine else [list(jobs)]
            calls = [call for group in groups for call in split_by_key(group, self.batch_key)]
            stack = list(reversed(calls))
            while stack:
                call = [job for job in stack.pop() if job.id not in self.reported]
                call = self._skip_cancelled(call)
                if call:
                    stack.extend(reversed(self._call(call)))
        finally:
            self.events.put(Exited())

    def _skip_cancelled(self, jobs: list[Job]) -> list[Job]:
        cancelled = [job for job in jobs if self.signals.cancelled(job.id)]
        for job in cancelled:
            self.reported.add(job.id)
            self.events.put(Reported(job, JobCancelled("cancelled before it ran")))
        return [job for job in jobs if job.id not in self.reported]

    def _engine(self, model: str | None) -> Engine:
        """The engine for `model`: loaded first (a `Loading` event) when the worker does not hold it."""
        if self.models is None:
            return self.engine
        if self.models.affine and model not in self.models.held:
            self.events.put(Loading(model, time.monotonic()))
        return self.models.engine(model)

    def _call(self, jobs: list[Job]) -> list[list[Job]]:
        """Call the engine once on `jobs`; return the halves to run next when the call failed. A
        checkpoint that fails to load fails the call's jobs (retryable), not the worker."""
        try:
            engine = self._engine(jobs[0].model)
        except Exception as exc:
            log.exception("loading model %s failed", jobs[0].model)
            self.events.put(Started(tuple(jobs), time.monotonic()))
            self._finish(jobs, [exc] * len(jobs))
            return []
        self.events.put(Started(tuple(jobs), time.monotonic()))
        by_id = {job.id: job for job in jobs}
        context = RunContext(
            list(by_id),
            self.data_dir,
            sink=lambda i, r: self._report(by_id, i, r),
            signals=self.signals,
            results=self.results,  # type: ignore[arg-type]  # None: RunContext makes the local store
        )
        try:
            results: list[Result] = list(engine.run([job.input for job in jobs], context))
            if len(results) != len(jobs):
                raise RuntimeError(f"engine returned {len(results)} results for {len(jobs)} inputs")
        except Exception as exc:
            if len(jobs) > 1:
                log.warning(
                    "a batch of %d failed as a whole (%s); running its halves", len(jobs), one_line(exc)
                )
                half = len(jobs) // 2
                return [jobs[:half], jobs[half:]]
            results = [exc]
        self._finish(jobs, results)
        return []

    def _finish(self, jobs: list[Job], results: Sequence[Result]) -> None:
        pairs = [
            (job, result) for job, result in zip(jobs, results, strict=True) if job.id not in self.reported
        ]
        self.events.put(Finished(tuple(job for job, _ in pairs), tuple(result for _, result in pairs)))

    def _report(self, jobs: dict[str, Job], job_id: str, result: Result) -> None:
        if job_id not in jobs:
            raise ValueError(f"job {job_id!r} is not in this call")
        if job_id not in self.reported:
            self.reported.add(job_id)
            self.events.put(Reported(jobs[job_id], result))


# -- the main thread ----------------------------------------------------------------------------


@dataclass
class BatchRun:
    """What the main thread knows about a running batch: what is settled, what runs, what is due."""

    jobs: tuple[Job, ...]
    started: float = field(default_factory=time.monotonic)
    running: tuple[Job, ...] = ()
    running_since: float = 0.0
    early: list[Outcome] = field(default_factory=list)
    given: set[str] = field(default_factory=set)  # jobs whose outcome went to settle
    exited: bool = False
    cancelled: frozenset[str] = frozenset()  # jobs whose cancel the main thread has seen

    def __post_init__(self) -> None:
        self.running, self.running_since = self.jobs, self.started

    loading: bool = False  # the engine thread loads a checkpoint: no call runs

    @property
    def deadline(self) -> float:
        """When the call running now is overdue; never, once the engine thread has exited, or
        while it loads a checkpoint."""
        if self.exited or self.loading:
            return math.inf
        return call_deadline(self.running, self.running_since)

    @property
    def open_ids(self) -> list[str]:
        """Jobs whose outcome has not gone to settle: the leases to keep renewing."""
        return [job.id for job in self.jobs if job.id not in self.given]

    def apply(self, event: Event) -> list[Outcome]:
        """Take in one event; return the outcomes to settle now (a finished call's, in one go)."""
        if isinstance(event, FirstText):
            return []  # the watcher's business (it reports at once), not the batch's
        if isinstance(event, Loading):
            self.loading = True
        elif isinstance(event, Started):
            self.running, self.running_since, self.loading = event.jobs, event.at, False
        elif isinstance(event, Reported):
            self.early.append(self._outcome(event.job, event.result))
            self.given.add(event.job.id)
        elif isinstance(event, Finished):
            self.given.update(job.id for job in event.jobs)
            pairs = zip(event.jobs, event.results, strict=True)
            return self.take_early() + [self._outcome(job, result) for job, result in pairs]
        else:
            self.exited = True
            return self.take_early()
        return []

    def _outcome(self, job: Job, result: Result) -> Outcome:
        return outcome(job, result, cancelled=job.id in self.cancelled or isinstance(result, JobCancelled))

    def take_early(self) -> list[Outcome]:
        """The results reported before their call returned, not yet settled."""
        taken, self.early = self.early, []
        return taken

    def leftovers(self) -> list[Outcome]:
        """Once the engine thread exited: a retryable failure for any job it left without a result
        (the thread died of something that is not an Exception)."""
        error = RuntimeError("the engine thread stopped without a result for this job")
        left = [self._outcome(job, error) for job in self.jobs if job.id not in self.given]
        self.given.update(o.job_id for o in left)
        return self.take_early() + left

    def abandon(self) -> list[Outcome]:
        """Outcomes for every job not settled yet, once the running call is past its deadline.

        Reported results are settled as they are. The running call's jobs go back to be leased in
        halves (alone: the job's own timeout, counted as a retryable failure); jobs whose call had not
        started are not suspects and go back with the running call's size as their limit."""
        outcomes = self.take_early()
        running = {job.id for job in self.running}
        for job in self.jobs:
            if job.id not in self.given:
                outcomes.append(self._abandoned(job, job.id in running))
                self.given.add(job.id)
        return outcomes

    def _abandoned(self, job: Job, running: bool) -> Outcome:
        if job.id in self.cancelled:
            return Outcome.cancelled(job.id)
        size = len(self.running)
        if running and size == 1:
            return Outcome.failure(job.id, f"TimeoutError: job ran past its timeout of {job.timeout:g} s")
        seconds = call_deadline(self.running, 0.0)
        if running:
            error = f"TimeoutError: a batch of {size} ran past its deadline of {seconds:g} s"
            return Outcome.handback(job.id, error, batch_limit=size // 2)
        error = f"TimeoutError: handed back unrun: a batch of {size} beside it hung past {seconds:g} s"
        return Outcome.handback(job.id, error, batch_limit=size)
