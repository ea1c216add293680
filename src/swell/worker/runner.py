"""The worker loop: lease a batch, run it in a thread while renewing leases, settle results as they come.

The engine thread (`batch.Executor`) runs the batch, halving it when a call fails as a whole; this
thread settles each finished call at once (one queue call per call) and renews the leases of the
jobs still open. A call that outlives its deadline (the sum of its jobs' timeouts, see
`swell.worker.batch`) cannot be stopped, since a Python thread cannot be killed: what finished is
settled, the rest handed back to be leased in smaller batches (alone: failed, retryable), and
`BatchTimeout` makes the process exit so the supervisor starts a clean worker.

While a batch runs, this thread also sends what the engine reported (progress, streamed text of
each completion, preview images stored through the result store) in one `queue.report` at most
every REPORT_SECONDS (a job's first piece of text at once: the first token a streaming client
waits for), and asks `queue.cancel_requested` about the open jobs every CANCEL_SECONDS,
so that the engine's `context.cancelled(job)` turns true (see `swell.worker.batch.Signals`). A
job's pending reports are sent before its outcome is settled, so its event log has every delta
before its final state.

Storage that fails (`Unavailable`, OSError) stops neither: leasing backs off, outcomes are kept and
recorded when storage answers again, reports are kept and sent later (`swell.worker.storage`).
SIGTERM stops leasing; the running batch finishes and the worker exits 0.

Batch work (`Priority.BATCH`, leased only when no interactive job is available) is handed back when
interactive work arrives: while a batch job runs, this thread asks `queue.interactive_waiting` for
the models the worker holds every HANDBACK_SECONDS; when one waits, the engine is told to stop the
batch job through the cancel signal (`context.cancelled(job)`), and whatever it returns, the job
goes back to the queue untouched (`queue.release`: the attempt does not count).
"""

from __future__ import annotations

import logging
import math
import queue as queues
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swell.core.config import Affinity
from swell.core.errors import SwellError
from swell.core.jobs import Job, Priority
from swell.engines.base import Engine
from swell.engines.results import ResultStore, results_from_env
from swell.queue.base import Outcome, QueueBackend, Update
from swell.worker.batch import BatchKey, BatchRun, Event, Executor, Exited, FirstText, Pending, Signals
from swell.worker.models import ModelSet
from swell.worker.storage import STORAGE_ERRORS, Backoff, Complaints, Ledger, WorkerCounters

IDLE_SLEEP_MIN = 0.002
IDLE_SLEEP_MAX = 0.05
REPORT_SECONDS = 0.2  # the longest a progress report or a piece of text waits before it is sent
CANCEL_SECONDS = 0.25  # how often the open jobs of a running batch are checked for a cancel request
HANDBACK_SECONDS = 1.0  # how often a running batch job asks whether interactive work waits
RELEASE_ERRORS: tuple[type[Exception], ...] = (*STORAGE_ERRORS, SwellError)  # lost, or storage down
PREVIEW_TYPES = ((b"\x89PNG", ".png", "image/png"), (b"\xff\xd8", ".jpg", "image/jpeg"))

log = logging.getLogger("swell.worker")

__all__ = ["BatchTimeout", "Runner", "WorkerCounters"]


class BatchTimeout(Exception):
    """A batch ran past its deadline; the worker must exit."""


@dataclass
class Runner:
    """One worker's pull loop over `queue` for `service` with a loaded `engine`."""

    queue: QueueBackend
    engine: Engine
    service: str
    owner: str
    data_dir: Path
    max_batch_size: int = 1
    lease_seconds: float = 30.0
    stopping: threading.Event = field(default_factory=threading.Event)
    on_change: Callable[[], None] = lambda: None
    results: ResultStore | None = None  # where result files and previews go; None: SWELL_RESULTS_URL
    batch_key: BatchKey | None = None  # the engine spec's: jobs with equal keys share a call
    report_seconds: float = REPORT_SECONDS
    cancel_seconds: float = CANCEL_SECONDS
    models: ModelSet | None = None  # several checkpoints (None: `engine` alone, for every job)
    affinity: Affinity | None = None  # how to lease for `models`; None: the defaults
    handback_seconds: float = HANDBACK_SECONDS
    ledger: Ledger = field(init=False)
    _releasing: set[str] = field(default_factory=set, init=False)  # batch jobs being handed back
    _backoff: Backoff = field(default_factory=Backoff, init=False)
    _previews: Complaints = field(default_factory=lambda: Complaints("storing a preview"), init=False)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.queue, self.owner)
        if self.results is None:
            self.results = results_from_env(self.data_dir)
        if self.models is None:
            self.models = ModelSet.single(self.engine)

    @property
    def counters(self) -> WorkerCounters:
        return self.ledger.counters

    def serve(self) -> None:
        """Lease and run batches until `stopping` is set; raises BatchTimeout on a hung batch."""
        idle = IDLE_SLEEP_MIN
        while not self.stopping.is_set():
            jobs = self._lease() if self.ledger.flush() else None
            if jobs is None:
                self._set_busy(False)
                self.stopping.wait(self._backoff.next())
                continue
            self._backoff.reset()
            if not jobs:
                self._set_busy(False)
                self.stopping.wait(idle)
                idle = min(idle * 2, IDLE_SLEEP_MAX)
                continue
            idle = IDLE_SLEEP_MIN
            self.run_batch(jobs)
        self.ledger.drain(self.lease_seconds)

    def run_batch(self, jobs: list[Job]) -> None:
        """Run `jobs` in a thread, renewing their leases and settling each finished call meanwhile.

        The worker stays busy from its first batch until a lease finds nothing, so a stream of
        batches does not rewrite the status file twice per batch."""
        self._set_busy(True)
        events: queues.SimpleQueue[Event] = queues.SimpleQueue()
        run, signals = BatchRun(tuple(jobs)), Signals(wake=lambda: events.put(FirstText()))
        executor = Executor(
            self.engine,
            self.data_dir,
            events,
            signals=signals,
            results=self.results,
            batch_key=self.batch_key,
            models=self.models,
        )
        threading.Thread(target=executor.run, args=(jobs,), name="engine", daemon=True).start()
        if not self._watch(run, events, signals):
            self._give_up(run, events, signals)

    def _lease(self) -> list[Job] | None:
        """A batch (perhaps empty), or None when storage failed."""
        try:
            jobs = self.queue.lease(
                self.service,
                self.owner,
                max_jobs=self.max_batch_size if self._batches() else 1,
                lease_seconds=self.lease_seconds,
                **self._affinity(),
            )
        except STORAGE_ERRORS as exc:
            self.ledger.complaints.failed(exc)
            return None
        self.ledger.answered()
        return jobs

    def _batches(self) -> bool:
        models = self.models
        return models.batches if models is not None and models.affine else bool(self.engine.batches)

    def _affinity(self) -> dict[str, Any]:
        """The lease's model arguments: the held checkpoints first with the starvation guard;
        the one engine's model (a preference) for a single engine; nothing for the
        `prefer_held: false` baseline, which takes jobs in plain rank order."""
        models, affinity = self.models, self.affinity or Affinity()
        if models is None or not models.affine:
            return {"model": self.engine.model}
        if not affinity.prefer_held:
            return {}
        held = [model for model in models.held if model is not None]
        return {"models": held, "starve_after": affinity.max_wait_seconds}

    def _watch(self, run: BatchRun, events: queues.SimpleQueue[Event], signals: Signals) -> bool:
        """Follow the engine thread until it exits (True) or its call passes its deadline (False)."""
        now = time.monotonic()
        renew_at = now + self.lease_seconds / 3
        report_at, cancel_at = now + self.report_seconds, now + self.cancel_seconds
        batch = {job.id for job in run.jobs if job.priority is Priority.BATCH}
        handback_at = now + self.handback_seconds if batch else math.inf
        while True:
            wake = min(renew_at, run.deadline, cancel_at, report_at, handback_at)
            event = _next(events, wake - time.monotonic())
            if isinstance(event, FirstText):
                self._report(signals)  # a first token goes out at once; the rest every report_seconds
            elif event is not None:
                self._settle(run.apply(event), signals)
            if isinstance(event, Exited):
                self._settle(run.leftovers(), signals)
                return True
            now = time.monotonic()
            if now >= run.deadline:
                return False
            if now >= renew_at:
                self._settle(run.take_early(), signals)
                self.ledger.renew(run.open_ids, self.lease_seconds)
                renew_at = now + self.lease_seconds / 3
            if now >= report_at:
                self._report(signals)
                report_at = now + self.report_seconds
            if now >= cancel_at:
                self._poll_cancels(run, signals)
                cancel_at = now + self.cancel_seconds
            if now >= handback_at:
                self._poll_handback(run, signals, batch)
                handback_at = now + self.handback_seconds

    def _give_up(self, run: BatchRun, events: queues.SimpleQueue[Event], signals: Signals) -> None:
        """Settle what finished, hand back the rest, and make the worker exit."""
        while (event := _next(events, 0.0)) is not None and not isinstance(event, Exited):
            self._settle(run.apply(event), signals)
        self._settle(run.abandon(), signals)
        self.ledger.drain(self.lease_seconds)
        size = len(run.running)
        raise BatchTimeout(f"a call on {size} of a batch of {len(run.jobs)} ran past its deadline")

    def _settle(self, outcomes: list[Outcome], signals: Signals | None = None) -> None:
        """Record `outcomes`, after sending what their jobs reported (their events come before the
        final state); the counters reach the status file with the next heartbeat."""
        if not outcomes:
            return
        if signals is not None:
            settled = {o.job_id for o in outcomes}
            self._report(signals, settled)
            signals.drop(settled)
        if self._releasing:
            for o in outcomes:
                if o.job_id in self._releasing:
                    self._release(o.job_id)
            outcomes = [o for o in outcomes if o.job_id not in self._releasing]
        self.ledger.settle(outcomes)

    def _report(self, signals: Signals, job_ids: set[str] | None = None) -> None:
        """Send what the engine reported (for `job_ids`, when given) in one queue call; kept on failure."""
        taken = signals.take(job_ids)
        if taken and not self.ledger.report([self._update(job_id, p) for job_id, p in taken.items()]):
            signals.put_back(taken)

    def _update(self, job_id: str, pending: Pending) -> Update:
        """One update for the job: its progress, and one text per completion (completion 0's as
        `delta`, what a job of one completion always sent; the others' in `deltas`)."""
        preview = self._store_preview(job_id, pending.preview) if pending.preview is not None else None
        texts = pending.joined()
        first = texts.pop(0, None)
        return Update(job_id, pending.fraction, pending.message, delta=first, preview=preview, deltas=texts)

    def _store_preview(self, job_id: str, data: bytes) -> str | None:
        """The preview image stored as the job's `preview.<ext>` (replaced by each newer one), or None
        when it is no image we know or cannot be stored now (progress goes on without it)."""
        kind = next(((ext, ct) for magic, ext, ct in PREVIEW_TYPES if data.startswith(magic)), None)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            kind = (".webp", "image/webp")
        if kind is None or self.results is None:
            return None
        try:
            name = self.results.put(job_id, f"preview{kind[0]}", data, kind[1])
        except Exception as exc:  # a preview is never worth failing a job for
            self._previews.failed(exc)
            return None
        self._previews.worked()
        return name

    def _poll_cancels(self, run: BatchRun, signals: Signals) -> None:
        """Mark the open jobs whose cancel was requested, for the engine and for their outcomes."""
        asked = self.ledger.cancel_requested(run.open_ids)
        if asked:
            signals.mark_cancelled(asked)
            run.cancelled = signals.cancelled_ids

    def _poll_handback(self, run: BatchRun, signals: Signals, batch: set[str]) -> None:
        """Hand the open batch jobs back when an interactive job waits for a model this worker
        holds (any of its service's, for one engine without affinity): stop them at the engine's
        next step; `_settle` releases them whatever the engine returned."""
        running = [i for i in run.open_ids if i in batch and i not in self._releasing]
        if not running:
            return
        models = self.models
        held = [m for m in models.held if m is not None] if models is not None and models.affine else []
        try:
            waiting = self.queue.interactive_waiting(self.service, held)
        except STORAGE_ERRORS as exc:
            self.ledger.complaints.failed(exc)
            return
        if waiting:
            log.info("handing back %d batch job(s): interactive work waits", len(running))
            self._releasing.update(running)
            signals.mark_cancelled(set(running))

    def _release(self, job_id: str) -> None:
        """Back to the queue untouched (not counted); a release that fails leaves the lease to run
        out, which hands the job back as well."""
        self._releasing.discard(job_id)
        try:
            self.queue.release(job_id, self.owner)
        except RELEASE_ERRORS as exc:
            log.warning("could not hand back batch job %s: %s", job_id, exc)
            return
        self.counters.jobs_handed_back += 1

    def _set_busy(self, busy: bool) -> None:
        if self.counters.busy != busy:
            self.counters.busy = busy
            self.on_change()


def _next(events: queues.SimpleQueue[Event], timeout: float) -> Event | None:
    """The next event within `timeout` seconds (none to wait: only one already there), or None."""
    try:
        return events.get(timeout=timeout) if timeout > 0 else events.get_nowait()
    except queues.Empty:
        return None
