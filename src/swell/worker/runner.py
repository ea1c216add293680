"""The worker loop: lease a batch, run it in a thread while renewing leases, settle results as they come.

The engine thread (`batch.Executor`) runs the batch, halving it when a call fails as a whole; this
thread settles each finished call at once (one queue call per call) and renews the leases of the
jobs still open. A call that outlives its deadline (the sum of its jobs' timeouts, see
`swell.worker.batch`) cannot be stopped, since a Python thread cannot be killed: what finished is
settled, the rest handed back to be leased in smaller batches (alone: failed, retryable), and
`BatchTimeout` makes the process exit so the supervisor starts a clean worker.

Storage that fails (`Unavailable`, OSError) stops neither: leasing backs off, outcomes are kept and
recorded when storage answers again (`swell.worker.storage`). SIGTERM stops leasing; the running
batch finishes and the worker exits 0.
"""

from __future__ import annotations

import queue as queues
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from swell.core.jobs import Job
from swell.engines.base import Engine
from swell.queue.base import Outcome, QueueBackend
from swell.worker.batch import BatchRun, Event, Executor, Exited
from swell.worker.storage import STORAGE_ERRORS, Backoff, Ledger, WorkerCounters

IDLE_SLEEP_MIN = 0.002
IDLE_SLEEP_MAX = 0.05

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
    ledger: Ledger = field(init=False)
    _backoff: Backoff = field(default_factory=Backoff, init=False)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.queue, self.owner)

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
        run = BatchRun(tuple(jobs))
        executor = Executor(self.engine, self.data_dir, events)
        threading.Thread(target=executor.run, args=(jobs,), name="engine", daemon=True).start()
        if not self._watch(run, events):
            self._give_up(run, events)

    def _lease(self) -> list[Job] | None:
        """A batch (perhaps empty), or None when storage failed."""
        try:
            jobs = self.queue.lease(
                self.service,
                self.owner,
                max_jobs=self.max_batch_size if self.engine.batches else 1,
                lease_seconds=self.lease_seconds,
                model=self.engine.model,
            )
        except STORAGE_ERRORS as exc:
            self.ledger.complaints.failed(exc)
            return None
        self.ledger.answered()
        return jobs

    def _watch(self, run: BatchRun, events: queues.SimpleQueue[Event]) -> bool:
        """Follow the engine thread until it exits (True) or its call passes its deadline (False)."""
        renew_at = time.monotonic() + self.lease_seconds / 3
        while True:
            event = _next(events, min(renew_at, run.deadline) - time.monotonic())
            if event is not None:
                self._settle(run.apply(event))
            if isinstance(event, Exited):
                self._settle(run.leftovers())
                return True
            now = time.monotonic()
            if now >= run.deadline:
                return False
            if now >= renew_at:
                self._settle(run.take_early())
                self.ledger.renew(run.open_ids, self.lease_seconds)
                renew_at = now + self.lease_seconds / 3

    def _give_up(self, run: BatchRun, events: queues.SimpleQueue[Event]) -> None:
        """Settle what finished, hand back the rest, and make the worker exit."""
        while (event := _next(events, 0.0)) is not None and not isinstance(event, Exited):
            self._settle(run.apply(event))
        self._settle(run.abandon())
        self.ledger.drain(self.lease_seconds)
        size = len(run.running)
        raise BatchTimeout(f"a call on {size} of a batch of {len(run.jobs)} ran past its deadline")

    def _settle(self, outcomes: list[Outcome]) -> None:
        if outcomes:  # the counters reach the status file with the next heartbeat
            self.ledger.settle(outcomes)

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
