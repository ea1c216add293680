"""`python -m swell.worker`: one worker process for one service (started by a cluster backend).

It is started with `swell.worker.contract.WorkerArgs` and reports a `WorkerStatus` in its status file.
Exit status: 0 after a drain (SIGTERM, or the supervisor gone), EXIT_FAILED when the engine could not
be built or loaded or the worker died of an error (its status then says `failed` and why),
EXIT_TIMEOUT when a batch hung past its deadline (status `dead`). Files it creates are private to
the user (umask 077): results, status files, the job files engines write.

Drain (a preemption notice: SIGTERM with a grace period, as Kubernetes and Spot interruption
handlers send): the worker stops leasing at once and lets the batch it runs finish. Should the batch
still run when the grace period (`--drain-seconds`, `SWELL_DRAIN_SECONDS`) is nearly over, the jobs it
still holds go back to the queue untouched (`queue.release`: no attempt counted, a preemption is not
the job's fault) and the process exits 0 at once, since an engine thread cannot be stopped. Either
way the status says `drained: {finished, handed_back, seconds}`.

Shared GPUs: a worker given a fraction of a GPU (`--gpu-fraction`) measures the engine's footprint
after load and, where CUDA exists, caps its own allocator at its share, refusing to start when the
footprint with headroom does not fit (swell.cluster.gpu). An allocation past the cap fails that job
(retryable), not its neighbours on the GPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from swell.cluster import gpu
from swell.core import heap
from swell.core.jobs import Job
from swell.data.config import DatasetConfig
from swell.engines.base import Engine, LoadTimings
from swell.engines.registry import batch_key_of, create_engine
from swell.engines.results import results_from_env
from swell.queue.base import Outcome, QueueBackend, open_queue
from swell.worker import DATASETS_ENV
from swell.worker.contract import Drained, GpuShare, WorkerArgs, WorkerState, WorkerStatus, publish
from swell.worker.models import ModelSet
from swell.worker.runner import BatchTimeout, Runner
from swell.worker.status import describe_error, status_path, touch_status
from swell.worker.storage import STORAGE_ERRORS, Backoff, Complaints

HEARTBEAT_SECONDS = 1.0
EXIT_FAILED = 1
EXIT_TIMEOUT = 3
PRIVATE_UMASK = 0o077
EXIT_MARGIN = 0.2  # share of the grace period kept for handing back and exiting (at most MARGIN_MAX)
MARGIN_MAX = 5.0
NODE_ENV = "SWELL_NODE_ID"  # set by a cluster backend: the node this worker runs on

log = logging.getLogger("swell.worker")


class Reporter:
    """Writes the worker's `WorkerStatus` to its status file, and again every heartbeat.

    Never raises for the file: a write that fails (a full disk) is logged once per kind of error,
    the file's time stamp is still set so the supervisor sees the worker alive, and the next beat
    writes again."""

    def __init__(self, path: Any, node: str | None = None) -> None:
        self.path = path
        self.status = WorkerStatus(node=node)
        self.runner: Runner | None = None
        self._lock = threading.Lock()
        self._complaints = Complaints(f"writing the status file {path}")

    def update(self, **fields: Any) -> None:
        with self._lock:
            status = self.status.evolve(**fields)
            if self.runner is not None:
                status = _counted(status, self.runner)
            self.status = status.evolve(heartbeat=time.time())
            self._publish()

    def beat(self, stop: threading.Event, orphaned: Callable[[], None]) -> None:
        """Heartbeat; and when the supervisor that started this worker is gone (killed, say),
        call `orphaned` so the worker drains and exits instead of serving unwatched forever.
        Nothing ends this loop but `stop`: an error in one beat is logged and the next one tries."""
        parent = os.getppid()
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                if os.getppid() != parent:
                    orphaned()
                self.update()
            except Exception as exc:  # the heartbeat must outlive any one bad beat
                self._complaints.failed(exc)

    def _publish(self) -> None:
        try:
            publish(self.path, self.status)
        except OSError as exc:
            self._complaints.failed(exc)
            with contextlib.suppress(OSError):  # no file yet: nothing to keep alive
                touch_status(self.path)
            return
        self._complaints.worked()


def _counted(status: WorkerStatus, runner: Runner) -> WorkerStatus:
    counters = runner.counters
    state = status.state
    if state in (WorkerState.READY, WorkerState.BUSY):
        state = WorkerState.BUSY if counters.busy else WorkerState.READY
    return status.evolve(
        state=state,
        jobs_done=counters.jobs_done,
        jobs_failed=counters.jobs_failed,
        jobs_handed_back=counters.jobs_handed_back,
    )


@dataclass
class HeldJobs:
    """The queue as this worker uses it, keeping count of the jobs it holds: a drain whose grace
    period runs out hands exactly those back. Leasing, settling and releasing are intercepted;
    every other call goes to `queue` unchanged."""

    queue: QueueBackend
    held: set[str] = field(default_factory=set)
    settled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def lease(self, service: str, owner: str, **options: Any) -> list[Job]:
        jobs = self.queue.lease(service, owner, **options)
        with self.lock:
            self.held.update(job.id for job in jobs)
        return jobs

    def settle(self, owner: str, outcomes: Sequence[Outcome]) -> list[Any]:
        answers = self.queue.settle(owner, outcomes)
        self._let_go([o.job_id for o, a in zip(outcomes, answers, strict=False) if isinstance(a, Job)])
        return answers

    def release(self, job_id: str, owner: str) -> Job:
        job = self.queue.release(job_id, owner)
        self._let_go([job_id], count=False)
        return job

    def hand_back(self, owner: str) -> int:
        """Release every job still held; how many went back (a lost lease went back already)."""
        with self.lock:
            held, self.held = sorted(self.held), set()
        returned = 0
        for job_id in held:
            with contextlib.suppress(Exception):  # lost, or storage down: its lease runs out instead
                self.queue.release(job_id, owner)
                returned += 1
        return returned

    def _let_go(self, job_ids: list[str], *, count: bool = True) -> None:
        with self.lock:
            for job_id in job_ids:
                if job_id in self.held:
                    self.held.discard(job_id)
                    self.settled += int(count)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)


def datasets_from_env(environ: Mapping[str, str] | None = None) -> dict[str, DatasetConfig]:
    """The `datasets:` config the supervisor passed in SWELL_DATASETS (JSON; not argv, for secrets)."""
    raw = json.loads((os.environ if environ is None else environ).get(DATASETS_ENV) or "{}")
    return {name: DatasetConfig.model_validate(spec) for name, spec in raw.items()}


def main(argv: list[str] | None = None) -> int:
    os.umask(PRIVATE_UMASK)
    args = WorkerArgs.parse(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = os.environ.get(NODE_ENV) or socket.gethostname()
    reporter = Reporter(status_path(args.data_dir, args.replica_id), node=node)
    try:
        return Worker(args, reporter).run()
    except Exception as exc:
        log.exception("worker %s failed", args.replica_id)
        reporter.update(state=WorkerState.FAILED, error=describe_error(exc))
        return EXIT_FAILED


class Worker:
    """One worker's life: load the engine, open the queue, serve, drain."""

    def __init__(self, args: WorkerArgs, reporter: Reporter) -> None:
        self.args = args
        self.reporter = reporter
        self.service = args.service
        self.results = results_from_env(args.data_dir)  # SWELL_RESULTS_URL, or files/ in the data dir
        self.stopping, self.stop_beat = threading.Event(), threading.Event()
        self.queue: HeldJobs | None = None
        self._drain_lock = threading.Lock()
        self._drain_started: float | None = None
        self._settled_before = 0
        self._stopped_cleanly = False

    def run(self) -> int:
        self._install_signals()
        self.reporter.update(state=WorkerState.LOADING)
        threading.Thread(target=self.reporter.beat, args=(self.stop_beat, self.drain), daemon=True).start()
        try:
            return self._serve(self._load())
        finally:
            self.stop_beat.set()

    def drain(self) -> None:
        """Stop leasing; hand back what is still held when the grace period is nearly over."""
        with self._drain_lock:
            if self._drain_started is not None:
                return
            self._drain_started = time.monotonic()
            self._settled_before = self.queue.settled if self.queue is not None else 0
        self.reporter.update(state=WorkerState.DRAINING)
        self.stopping.set()
        threading.Thread(target=self._grace_watch, name="grace", daemon=True).start()

    def _grace_watch(self) -> None:
        """At the end of the grace period (less a margin to exit in), give up on the running batch."""
        budget = self.args.drain_seconds
        time.sleep(max(0.0, budget - min(MARGIN_MAX, budget * EXIT_MARGIN)))
        with self._drain_lock:
            if self._stopped_cleanly:
                return
            returned = self.queue.hand_back(self.args.replica_id) if self.queue is not None else 0
            log.warning("grace period over: handed back %d jobs; exiting", returned)
            self.reporter.update(state=WorkerState.STOPPED, drained=self._drained(returned))
            logging.shutdown()
            os._exit(0)  # an engine thread cannot be stopped; the jobs it held are back in the queue

    def _drained(self, handed_back: int) -> Drained | None:
        if self._drain_started is None:
            return None
        finished = (self.queue.settled if self.queue is not None else 0) - self._settled_before
        seconds = round(time.monotonic() - self._drain_started, 3)
        return Drained(finished=finished, handed_back=handed_back, seconds=seconds)

    def _install_signals(self) -> None:
        def on_signal(signum: int, frame: object) -> None:
            # A handler runs on the main thread between two of its bytecodes, perhaps while that thread
            # holds the reporter's or the event's lock: taking them here could deadlock, so hand over.
            threading.Thread(target=self.drain, name="drain", daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _load(self) -> tuple[ModelSet, GpuShare | None]:
        """The engines to serve with, loaded: the service's one engine, or (with `models`) the
        checkpoints `--models` names (else the default model) as far as `max_loaded` allows."""
        datasets = datasets_from_env()
        if not self.service.models:
            engine = self._build(None, datasets)
            phases = LoadTimings.of(engine.load()).to_dict()
            return ModelSet.single(engine, phases), gpu.cap_to_share(self.args.gpu_fraction)
        affinity = self.service.affinity
        models = ModelSet(
            lambda model: self._build(model, datasets),
            max_loaded=affinity.max_loaded,
            budget_bytes=affinity.budget_bytes,
            on_change=lambda: self._switched(models),
        )
        wanted = list(self.args.models or [self.service.default_model])[: affinity.max_loaded]
        models.preload(reversed(wanted))  # the first named ends most recent
        models.serving = True
        return models, gpu.cap_to_share(self.args.gpu_fraction)

    def _build(self, model: str | None, datasets: Mapping[str, DatasetConfig]) -> Engine:
        options = self.service.model_options(model)
        return create_engine(
            self.service.engine, options, data_dir=self.args.data_dir, datasets=datasets, results=self.results
        )

    def _switched(self, models: ModelSet) -> None:
        """A checkpoint was loaded: what is held and the load counts go to the status file now."""
        if models.serving:
            self.reporter.update(**_held(models))

    def _serve(self, loaded: tuple[ModelSet, GpuShare | None]) -> int:
        models, share = loaded
        engine = models.current
        assert engine is not None  # a set is built loaded
        queue = self._open_queue()
        if queue is None:
            return self._stopped(models)
        self.queue = HeldJobs(queue)
        runner = Runner(
            self.queue,  # type: ignore[arg-type]  # a QueueBackend by delegation
            engine,
            self.service.name,
            self.args.replica_id,
            self.args.data_dir,
            max_batch_size=self.service.max_batch_size,
            lease_seconds=self.service.lease_seconds,
            stopping=self.stopping,
            on_change=self.reporter.update,
            results=self.results,
            batch_key=batch_key_of(self.service.engine),
            models=models,
            affinity=self.service.affinity,
        )
        self.reporter.runner = runner
        heap.freeze()  # the model's objects live as long as the process: keep the collector off them
        if not self.stopping.is_set():
            self.reporter.update(state=WorkerState.READY, gpu=share, **_held(models))
        try:
            runner.serve()
        except BatchTimeout as exc:
            self.reporter.update(state=WorkerState.DEAD, error=describe_error(exc))
            return EXIT_TIMEOUT
        return self._stopped(models)

    def _open_queue(self) -> QueueBackend | None:
        """The queue, retried with back-off while storage fails; None when asked to stop meanwhile."""
        backoff, complaints = Backoff(), Complaints(f"opening the queue for {self.service.name}")
        while not self.stopping.is_set():
            try:
                queue = open_queue(self.args.queue_url)
            except STORAGE_ERRORS as exc:
                complaints.failed(exc)
                self.stopping.wait(backoff.next())
                continue
            complaints.worked()
            return queue
        return None

    def _stopped(self, models: ModelSet) -> int:
        models.unload_all()
        with self._drain_lock:  # the grace watch must not exit the process under a clean stop
            self.reporter.update(state=WorkerState.STOPPED, drained=self._drained(0))
            self._stopped_cleanly = True
        return 0


def _held(models: ModelSet) -> dict[str, Any]:
    """The status fields that say which checkpoints a worker holds and what loading them cost."""
    held = models.held
    engine = models.current
    names = tuple(name for name in held if name is not None)
    model = names[0] if names else (engine.model if engine is not None else None)
    return {"model": model, "models": names, "phases": models.phases()}


if __name__ == "__main__":
    sys.exit(main())
