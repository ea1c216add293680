"""`python -m swell.worker`: one worker process for one service (started by the supervisor).

Exit status: 0 after a drain (SIGTERM, or the supervisor gone), EXIT_FAILED when the engine could not
be built or loaded or the worker died of an error (its status file then says `failed` and why),
EXIT_TIMEOUT when a batch hung past its deadline (status `dead`). Files it creates are private to
the user (umask 077): results, status files, the job files engines write.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from swell.core import heap
from swell.core.config import ServiceConfig
from swell.data.config import DatasetConfig
from swell.engines.base import Engine
from swell.engines.registry import create_engine
from swell.queue.base import QueueBackend, open_queue
from swell.worker import DATASETS_ENV, QUEUE_ENV
from swell.worker.runner import BatchTimeout, Runner
from swell.worker.status import WorkerState, describe_error, status_path, touch_status, write_status
from swell.worker.storage import STORAGE_ERRORS, Backoff, Complaints

HEARTBEAT_SECONDS = 1.0
EXIT_FAILED = 1
EXIT_TIMEOUT = 3
PRIVATE_UMASK = 0o077

log = logging.getLogger("swell.worker")


class Reporter:
    """Writes the worker's state, counters and phases to its status file, and again every heartbeat.

    Never raises for the file: a write that fails (a full disk) is logged once per kind of error,
    the file's time stamp is still set so the supervisor sees the worker alive, and the next beat
    writes again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.status: dict[str, Any] = {"state": WorkerState.STARTING, "phases": {}, "model": None}
        self.runner: Runner | None = None
        self._lock = threading.Lock()
        self._complaints = Complaints(f"writing the status file {path}")

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.status.update(fields)
            if self.runner is not None:
                self._count(self.runner)
            self.status["heartbeat"] = time.time()
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

    def _count(self, runner: Runner) -> None:
        counters = runner.counters
        self.status["jobs_done"] = counters.jobs_done
        self.status["jobs_failed"] = counters.jobs_failed
        self.status["jobs_handed_back"] = counters.jobs_handed_back
        if self.status["state"] in (WorkerState.READY, WorkerState.BUSY):
            self.status["state"] = WorkerState.BUSY if counters.busy else WorkerState.READY

    def _publish(self) -> None:
        try:
            write_status(self.path, self.status)
        except OSError as exc:
            self._complaints.failed(exc)
            with contextlib.suppress(OSError):  # no file yet: nothing to keep alive
                touch_status(self.path)
            return
        self._complaints.worked()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="swell.worker")
    parser.add_argument(
        "--queue", default=os.environ.get(QUEUE_ENV), help=f"queue URL (default: ${QUEUE_ENV})"
    )
    parser.add_argument("--service", required=True, help="the service's config as JSON")
    parser.add_argument("--replica-id", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    if not args.queue:
        parser.error(f"the queue URL is needed: --queue or ${QUEUE_ENV}")
    return args


def datasets_from_env(environ: Mapping[str, str] | None = None) -> dict[str, DatasetConfig]:
    """The `datasets:` config the supervisor passed in SWELL_DATASETS (JSON; not argv, for secrets)."""
    raw = json.loads((os.environ if environ is None else environ).get(DATASETS_ENV) or "{}")
    return {name: DatasetConfig.model_validate(spec) for name, spec in raw.items()}


def main(argv: list[str] | None = None) -> int:
    os.umask(PRIVATE_UMASK)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reporter = Reporter(status_path(args.data_dir, args.replica_id))
    try:
        return Worker(args, reporter).run()
    except Exception as exc:
        log.exception("worker %s failed", args.replica_id)
        reporter.update(state=WorkerState.FAILED, error=describe_error(exc))
        return EXIT_FAILED


class Worker:
    """One worker's life: load the engine, open the queue, serve, drain."""

    def __init__(self, args: argparse.Namespace, reporter: Reporter) -> None:
        self.args = args
        self.reporter = reporter
        self.service = ServiceConfig.model_validate(json.loads(args.service))
        self.stopping, self.stop_beat = threading.Event(), threading.Event()

    def run(self) -> int:
        self._install_signals()
        self.reporter.update(state=WorkerState.LOADING)
        threading.Thread(target=self.reporter.beat, args=(self.stop_beat, self.drain), daemon=True).start()
        try:
            return self._serve(self._load())
        finally:
            self.stop_beat.set()

    def drain(self) -> None:
        self.reporter.update(state=WorkerState.DRAINING)
        self.stopping.set()

    def _install_signals(self) -> None:
        def on_signal(signum: int, frame: object) -> None:
            # A handler runs on the main thread between two of its bytecodes, perhaps while that thread
            # holds the reporter's or the event's lock: taking them here could deadlock, so hand over.
            threading.Thread(target=self.drain, name="drain", daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _load(self) -> tuple[Engine, dict[str, float]]:
        datasets = datasets_from_env()
        options = self.service.options
        engine = create_engine(self.service.engine, options, data_dir=self.args.data_dir, datasets=datasets)
        return engine, engine.load()

    def _serve(self, loaded: tuple[Engine, dict[str, float]]) -> int:
        engine, phases = loaded
        queue = self._open_queue()
        if queue is None:
            return self._stopped(engine)
        runner = Runner(
            queue,
            engine,
            self.service.name,
            self.args.replica_id,
            self.args.data_dir,
            max_batch_size=self.service.max_batch_size,
            lease_seconds=self.service.lease_seconds,
            stopping=self.stopping,
            on_change=self.reporter.update,
        )
        self.reporter.runner = runner
        heap.freeze()  # the model's objects live as long as the process: keep the collector off them
        if not self.stopping.is_set():
            self.reporter.update(state=WorkerState.READY, phases=phases, model=engine.model)
        try:
            runner.serve()
        except BatchTimeout as exc:
            self.reporter.update(state=WorkerState.DEAD, error=describe_error(exc))
            return EXIT_TIMEOUT
        return self._stopped(engine)

    def _open_queue(self) -> QueueBackend | None:
        """The queue, retried with back-off while storage fails; None when asked to stop meanwhile."""
        backoff, complaints = Backoff(), Complaints(f"opening the queue for {self.service.name}")
        while not self.stopping.is_set():
            try:
                queue = open_queue(self.args.queue)
            except STORAGE_ERRORS as exc:
                complaints.failed(exc)
                self.stopping.wait(backoff.next())
                continue
            complaints.worked()
            return queue
        return None

    def _stopped(self, engine: Engine) -> int:
        engine.unload()
        self.reporter.update(state=WorkerState.STOPPED)
        return 0


if __name__ == "__main__":
    sys.exit(main())
