"""Local worker processes kept at each service's replica count by a reconcile loop.

Each worker is `python -m swell.worker` in its own process group; it publishes its state in an atomic
status file (swell.worker.status) every second. The monitor restarts a worker that exits unexpectedly
or whose heartbeat is older than `hang_seconds` (SIGKILL first), with an exponential restart back-off.
The `datasets:` config reaches each worker as JSON in SWELL_DATASETS, never in argv, so that S3
secrets do not show in `ps`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from swell.core.clock import Clock, SystemClock
from swell.core.config import ServiceConfig, SwellConfig
from swell.core.errors import ServiceNotFound
from swell.core.replicas import ReplicaInfo, ReplicaState
from swell.worker import DATASETS_ENV
from swell.worker.status import read_status, status_path

HANG_SECONDS = 15.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
MONITOR_INTERVAL = 0.25


@dataclass
class Slot:
    """One replica position: the process that fills it now and its restart history."""

    id: str
    service: ServiceConfig
    proc: subprocess.Popen[bytes] | None = None
    started_at: float | None = None
    restarts: int = 0
    next_start: float = 0.0
    backoff: float = BACKOFF_MIN
    draining: bool = False
    jobs: dict[str, int] = field(default_factory=lambda: {"done": 0, "failed": 0})


class LocalSupervisor:
    """Keeps each service at its desired number of local worker processes."""

    def __init__(
        self,
        config: SwellConfig,
        queue_url: str,
        data_dir: Path,
        *,
        clock: Clock = SystemClock(),
        hang_seconds: float = HANG_SECONDS,
    ) -> None:
        self.config = config
        self.queue_url = queue_url
        self.data_dir = Path(data_dir)
        self.clock = clock
        self.hang_seconds = hang_seconds
        self._services = {service.name: service for service in config.services}
        self._desired = {service.name: service.replicas.min for service in config.services}
        self._slots: list[Slot] = []
        self._retired: list[Slot] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.reconcile()
        self._thread = threading.Thread(target=self._monitor, name="swell-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM every worker so it drains; SIGKILL what is left after `timeout` seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            procs = [slot.proc for slot in self._slots + self._retired if slot.proc is not None]
        for proc in procs:
            _signal(proc, signal.SIGTERM)
        deadline = self.clock.now() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - self.clock.now()))
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait()

    def desired(self, service: str) -> int:
        return self._desired[self._service(service).name]

    def scale(self, service: str, replicas: int) -> None:
        """Set `service`'s replica count, clamped to its min..max; the monitor applies it."""
        spec = self._service(service)
        self._desired[service] = max(spec.replicas.min, min(spec.replicas.max, replicas))
        self.reconcile()

    def replicas(self) -> list[ReplicaInfo]:
        with self._lock:
            return [self._info(slot) for slot in self._slots + self._retired]

    def reconcile(self) -> None:
        """One pass: reap exits, kill hung workers, restart after back-off, scale up or down."""
        with self._lock:
            now = self.clock.now()
            self._reap_retired()
            for slot in self._slots:
                self._check(slot, now)
            for name, want in self._desired.items():
                self._resize(name, want)

    def _monitor(self) -> None:
        while not self._stop.wait(MONITOR_INTERVAL):
            self.reconcile()

    def _check(self, slot: Slot, now: float) -> None:
        proc = slot.proc
        if proc is not None and proc.poll() is None:
            status = read_status(self._status_path(slot)) or {}
            beat = float(status.get("heartbeat") or slot.started_at or now)
            if now - beat <= self.hang_seconds:
                if status.get("state") in ("ready", "busy"):
                    slot.backoff = BACKOFF_MIN
                return
            _signal(proc, signal.SIGKILL)
            proc.wait()
        if proc is not None:
            self._remember_counts(slot)
            slot.proc = None
            slot.restarts += 1
            slot.next_start = now + slot.backoff
            slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)
        if now >= slot.next_start:
            self._spawn(slot, now)

    def _resize(self, name: str, want: int) -> None:
        mine = [slot for slot in self._slots if slot.service.name == name]
        for _ in range(want - len(mine)):
            slot = Slot(id=f"{name}-{uuid.uuid4().hex[:8]}", service=self._services[name])
            self._slots.append(slot)
            self._spawn(slot, self.clock.now())
        for slot in sorted(mine, key=self._drain_order)[: max(0, len(mine) - want)]:
            self._slots.remove(slot)
            slot.draining = True
            if slot.proc is not None:
                _signal(slot.proc, signal.SIGTERM)
                self._retired.append(slot)

    def _drain_order(self, slot: Slot) -> tuple[bool, float]:
        status = read_status(self._status_path(slot)) or {}
        return (status.get("state") == "busy", -(slot.started_at or 0.0))

    def _reap_retired(self) -> None:
        self._retired = [slot for slot in self._retired if slot.proc is not None and slot.proc.poll() is None]

    def _spawn(self, slot: Slot, now: float) -> None:
        path = self._status_path(slot)
        path.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "swell.worker", "--queue", self.queue_url,
            "--service", slot.service.model_dump_json(), "--replica-id", slot.id,
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        slot.proc = subprocess.Popen(argv, start_new_session=True, env=self._worker_env())
        slot.started_at = now

    def _worker_env(self) -> dict[str, str]:
        """This process's environment plus the datasets (in the environment, so S3 secrets stay out of
        `ps`: argv is world-readable, /proc/PID/environ only to the owner)."""
        datasets = {name: spec.model_dump(mode="json") for name, spec in self.config.datasets.items()}
        return {**os.environ, DATASETS_ENV: json.dumps(datasets)}

    def _remember_counts(self, slot: Slot) -> None:
        status = read_status(self._status_path(slot)) or {}
        slot.jobs["done"] += int(status.get("jobs_done", 0))
        slot.jobs["failed"] += int(status.get("jobs_failed", 0))

    def _info(self, slot: Slot) -> ReplicaInfo:
        status = read_status(self._status_path(slot)) or {}
        alive = slot.proc is not None and slot.proc.poll() is None
        state = ReplicaState(status.get("state", "starting")) if alive else ReplicaState.DEAD
        if slot.draining:
            state = ReplicaState.DRAINING if alive else ReplicaState.STOPPED
        return ReplicaInfo(
            id=slot.id,
            service=slot.service.name,
            state=state,
            pid=slot.proc.pid if slot.proc is not None else None,
            model=status.get("model"),
            jobs_done=slot.jobs["done"] + int(status.get("jobs_done", 0)),
            jobs_failed=slot.jobs["failed"] + int(status.get("jobs_failed", 0)),
            restarts=slot.restarts,
            started_at=slot.started_at,
            last_heartbeat=status.get("heartbeat"),
            phases=dict(status.get("phases", {})),
        )

    def _status_path(self, slot: Slot) -> Path:
        return status_path(self.data_dir, slot.id)

    def _service(self, name: str) -> ServiceConfig:
        if name not in self._services:
            raise ServiceNotFound(f"no service {name!r}", field="service")
        return self._services[name]

    def __repr__(self) -> str:
        return f"LocalSupervisor(desired={self._desired}, replicas={len(self._slots)})"


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)
