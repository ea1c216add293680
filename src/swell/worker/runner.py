"""The worker loop: lease a batch, run it in a thread while renewing leases, report its results at once.

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
from swell.core.jobs import Job, JobState
from swell.engines.base import Engine, RunContext
from swell.queue.base import Outcome, QueueBackend

IDLE_SLEEP_MIN = 0.002
IDLE_SLEEP_MAX = 0.05

Result = dict[str, Any] | BaseException  # what the engine returned for one input


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
                self._set_busy(False)
                self.stopping.wait(idle)
                idle = min(idle * 2, IDLE_SLEEP_MAX)
                continue
            idle = IDLE_SLEEP_MIN
            self.run_batch(jobs)

    def run_batch(self, jobs: list[Job]) -> None:
        """Run `jobs` in a thread, renew their leases meanwhile, then report every outcome at once.

        The worker stays busy from its first batch until a lease finds nothing, so a stream of
        batches does not rewrite the status file twice per batch."""
        self._set_busy(True)
        results: list[list[Result]] = []
        context = RunContext([job.id for job in jobs], self.data_dir)
        thread = threading.Thread(target=self._execute, args=(jobs, context, results), daemon=True)
        thread.start()
        live = self._wait(thread, jobs)
        if thread.is_alive():
            timeout = [
                Outcome.failure(job.id, f"TimeoutError: job ran past its timeout of {job.timeout:g} s")
                for job in live
            ]
            self._settle(timeout)
            raise BatchTimeout(f"batch of {len(jobs)} ran past its timeout")
        held = {job.id for job in live}
        self._settle(
            [_outcome(job, result) for job, result in zip(jobs, results[0], strict=True) if job.id in held]
        )

    def _set_busy(self, busy: bool) -> None:
        if self.counters.busy != busy:
            self.counters.busy = busy
            self.on_change()

    def _execute(self, jobs: list[Job], context: RunContext, out: list[list[Result]]) -> None:
        try:
            results: list[Result] = list(self.engine.run([job.input for job in jobs], context))
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

    def _settle(self, outcomes: list[Outcome]) -> None:
        """Record the batch's outcomes in one queue call; a job whose lease was lost ran elsewhere."""
        for settled in self.queue.settle(self.owner, outcomes) if outcomes else []:
            if isinstance(settled, Job):
                if settled.state is JobState.SUCCEEDED:
                    self.counters.jobs_done += 1
                else:
                    self.counters.jobs_failed += 1


def _outcome(job: Job, result: Result) -> Outcome:
    if isinstance(result, BaseException):
        # bad input fails for good; anything else may pass on another try
        error = f"{type(result).__name__}: {result}"
        return Outcome.failure(job.id, error, retryable=not isinstance(result, ValidationError))
    return Outcome(job.id, result=result)
