"""The worker loop: lease a batch, run it in a thread while renewing leases, report each result.

A batch that outlives its jobs' timeout is failed (retryable) and the process exits, so the supervisor
starts a clean worker: a Python thread cannot be killed. SIGTERM stops leasing; the running batch
finishes and the worker exits 0.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swell.core.errors import LeaseLost, ValidationError
from swell.core.jobs import Job
from swell.engines.base import Engine, RunContext
from swell.queue.base import QueueBackend

IDLE_SLEEP_MIN = 0.002
IDLE_SLEEP_MAX = 0.05

Outcome = dict[str, Any] | BaseException


class BatchTimeout(Exception):
    """A batch ran past its jobs' timeout; the worker must exit."""


@dataclass
class WorkerCounters:
    jobs_done: int = 0
    jobs_failed: int = 0
    busy: bool = False


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
    counters: WorkerCounters = field(default_factory=WorkerCounters)
    on_change: Callable[[], None] = lambda: None

    def serve(self) -> None:
        """Lease and run batches until `stopping` is set; raises BatchTimeout on a hung batch."""
        idle = IDLE_SLEEP_MIN
        while not self.stopping.is_set():
            jobs = self.queue.lease(
                self.service,
                self.owner,
                max_jobs=self.max_batch_size if self.engine.batches else 1,
                lease_seconds=self.lease_seconds,
                model=self.engine.model,
            )
            if not jobs:
                self.stopping.wait(idle)
                idle = min(idle * 2, IDLE_SLEEP_MAX)
                continue
            idle = IDLE_SLEEP_MIN
            self.run_batch(jobs)

    def run_batch(self, jobs: list[Job]) -> None:
        """Run `jobs` in a thread, renew their leases meanwhile, then report every outcome."""
        self.counters.busy = True
        self.on_change()
        outcomes: list[list[Outcome]] = []
        context = RunContext([job.id for job in jobs], self.data_dir)
        thread = threading.Thread(target=self._execute, args=(jobs, context, outcomes), daemon=True)
        thread.start()
        live = self._wait(thread, jobs)
        if thread.is_alive():
            for job in live:
                self._fail(job, f"TimeoutError: job ran past its timeout of {job.timeout:g} s", True)
            raise BatchTimeout(f"batch of {len(jobs)} ran past its timeout")
        for job, outcome in zip(jobs, outcomes[0], strict=True):
            if job in live:
                self._report(job, outcome)
        self.counters.busy = False
        self.on_change()

    def _execute(self, jobs: list[Job], context: RunContext, out: list[list[Outcome]]) -> None:
        try:
            results: list[Outcome] = list(self.engine.run([job.input for job in jobs], context))
            if len(results) != len(jobs):
                raise RuntimeError(f"engine returned {len(results)} results for {len(jobs)} inputs")
        except Exception as exc:
            results = [exc] * len(jobs)
        out.append(results)

    def _wait(self, thread: threading.Thread, jobs: list[Job]) -> list[Job]:
        """Join `thread`, renewing leases every lease_seconds/3; return the jobs whose lease held."""
        live = list(jobs)
        deadline = time.monotonic() + min(job.timeout for job in jobs)
        while True:
            thread.join(max(0.0, min(self.lease_seconds / 3, deadline - time.monotonic())))
            if not thread.is_alive() or time.monotonic() >= deadline:
                return live
            live = [job for job in live if self._renew(job)]

    def _renew(self, job: Job) -> bool:
        try:
            self.queue.renew([job.id], self.owner, self.lease_seconds)
        except LeaseLost:
            return False
        return True

    def _report(self, job: Job, outcome: Outcome) -> None:
        if isinstance(outcome, BaseException):
            self._fail(job, f"{type(outcome).__name__}: {outcome}", not isinstance(outcome, ValidationError))
            return
        try:
            self.queue.complete(job.id, self.owner, outcome)
            self.counters.jobs_done += 1
        except LeaseLost:
            pass

    def _fail(self, job: Job, error: str, retryable: bool) -> None:
        try:
            self.queue.fail(job.id, self.owner, error, retryable=retryable)
            self.counters.jobs_failed += 1
        except LeaseLost:
            pass
