"""`python -m swell.worker`: one worker process for one service (started by the supervisor)."""

from __future__ import annotations

import argparse
import json
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
from swell.engines.registry import create_engine
from swell.queue.base import open_queue
from swell.worker import DATASETS_ENV
from swell.worker.runner import BatchTimeout, Runner
from swell.worker.status import status_path, write_status

HEARTBEAT_SECONDS = 1.0
EXIT_TIMEOUT = 3


class Reporter:
    """Writes the worker's state, counters and phases to its status file, and again every heartbeat."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.status: dict[str, Any] = {"state": "starting", "phases": {}, "model": None}
        self.runner: Runner | None = None
        self._lock = threading.Lock()

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.status.update(fields)
            if self.runner is not None:
                counters = self.runner.counters
                self.status["jobs_done"] = counters.jobs_done
                self.status["jobs_failed"] = counters.jobs_failed
                if self.status["state"] in ("ready", "busy"):
                    self.status["state"] = "busy" if counters.busy else "ready"
            self.status["heartbeat"] = time.time()
            write_status(self.path, self.status)

    def beat(self, stop: threading.Event, orphaned: Callable[[], None]) -> None:
        """Heartbeat; and when the supervisor that started this worker is gone (killed, say),
        call `orphaned` so the worker drains and exits instead of serving unwatched forever."""
        parent = os.getppid()
        while not stop.wait(HEARTBEAT_SECONDS):
            if os.getppid() != parent:
                orphaned()
            self.update()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="swell.worker")
    parser.add_argument("--queue", required=True, help="queue URL")
    parser.add_argument("--service", required=True, help="the service's config as JSON")
    parser.add_argument("--replica-id", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    return parser.parse_args(argv)


def datasets_from_env(environ: Mapping[str, str] | None = None) -> dict[str, DatasetConfig]:
    """The `datasets:` config the supervisor passed in SWELL_DATASETS (JSON; not argv, for secrets)."""
    raw = json.loads((os.environ if environ is None else environ).get(DATASETS_ENV) or "{}")
    return {name: DatasetConfig.model_validate(spec) for name, spec in raw.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    service = ServiceConfig.model_validate(json.loads(args.service))
    reporter = Reporter(status_path(args.data_dir, args.replica_id))
    stopping, stop_beat = threading.Event(), threading.Event()

    def drain(*_: object) -> None:
        reporter.update(state="draining")
        stopping.set()

    def on_signal(signum: int, frame: object) -> None:
        # A handler runs on the main thread between two of its bytecodes, perhaps while that thread
        # holds the reporter's or the event's lock: taking them here could deadlock, so hand over.
        threading.Thread(target=drain, name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reporter.update(state="loading")
    threading.Thread(target=reporter.beat, args=(stop_beat, drain), daemon=True).start()
    datasets = datasets_from_env()
    engine = create_engine(service.engine, service.options, data_dir=args.data_dir, datasets=datasets)
    phases = engine.load()
    runner = Runner(
        open_queue(args.queue),
        engine,
        service.name,
        args.replica_id,
        args.data_dir,
        max_batch_size=service.max_batch_size,
        lease_seconds=service.lease_seconds,
        stopping=stopping,
    )
    reporter.runner = runner
    runner.on_change = reporter.update
    heap.freeze()  # the model's objects live as long as the process: keep the collector off them
    if not stopping.is_set():
        reporter.update(state="ready", phases=phases, model=engine.model)
    try:
        runner.serve()
    except BatchTimeout:
        reporter.update(state="dead")
        return EXIT_TIMEOUT
    engine.unload()
    stop_beat.set()
    reporter.update(state="stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
