"""Local worker processes kept at each service's replica count by a reconcile loop.

Each worker is `python -m swell.worker` in its own process group; it publishes its state in an atomic
status file (swell.worker.status) every second. The monitor restarts a worker that exits unexpectedly
or whose heartbeat is older than `hang_seconds` (SIGKILL first), with an exponential restart back-off.

Why a replica's latest process ended stays in `ReplicaInfo.last_error` after the process is gone: the
`error` the worker wrote into its status file ("Type: message"), else what the supervisor saw (killed
by a signal, an exit status, a heartbeat that stopped). `crash_streak` counts the exits of processes
that never became ready, and is reset when one does: swell.core.replicas.unavailable_reason reads it.

A worker gets only the environment it needs, never the gateway's secrets (SWELL_API_KEY,
SWELL_WEBHOOK_SECRET, or anything else of `swell up`'s environment not listed here):
- the names in `PASS_NAMES` (PATH, HOME, locale and time zone, temporary directories, the virtualenv,
  LD_LIBRARY_PATH, TLS trust stores, HTTP proxies, the thread counts of OpenMP/MKL/OpenBLAS and the
  tokenizers, SWELL_CACHE_QUOTA for the node cache), and every name starting with one of
  `PASS_PREFIXES` (LC_, PYTHON, HF_, TRANSFORMERS_, SENTENCE_TRANSFORMERS_, TORCH_, PYTORCH_, CUDA_,
  NVIDIA_, NCCL_, HIP_, ROCR_, OMP_, MKL_, KMP_, OPENBLAS_);
- AWS_* only when the dataset the service's engine names (`options.dataset`) comes from s3://;
- SWELL_DATASETS: that one dataset's config as JSON, in the environment rather than argv so that its
  S3 secrets do not show in `ps` (/proc/PID/environ is readable only by the owner), and no other
  dataset's secrets;
- the names or prefixes (`NAME_*`) the service lists in `pass_env` (an API key its function needs).
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swell.core.clock import Clock, SystemClock
from swell.core.config import ServiceConfig, SwellConfig
from swell.core.errors import ServiceNotFound
from swell.core.replicas import ReplicaInfo, ReplicaState
from swell.data.config import DatasetConfig
from swell.worker import DATASETS_ENV, QUEUE_ENV
from swell.worker.status import read_status, status_path

HANG_SECONDS = 15.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
MONITOR_INTERVAL = 0.25
MAX_ERROR_CHARS = 1000

PASS_NAMES = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM",
        "TMPDIR", "TEMP", "TMP", "XDG_CACHE_HOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
        "TOKENIZERS_PARALLELISM", "SWELL_CACHE_QUOTA",
    }
)  # fmt: skip
PASS_PREFIXES = (
    "LC_", "PYTHON", "HF_", "TRANSFORMERS_", "SENTENCE_TRANSFORMERS_", "TORCH_", "PYTORCH_",
    "CUDA_", "NVIDIA_", "NCCL_", "HIP_", "ROCR_", "OMP_", "MKL_", "KMP_", "OPENBLAS_",
)  # fmt: skip
S3_PREFIXES = ("AWS_",)

Spawn = Callable[[list[str], dict[str, str]], "subprocess.Popen[bytes]"]


def popen_worker(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a worker in its own process group (so a signal reaches the whole group)."""
    return subprocess.Popen(argv, start_new_session=True, env=env)


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
    ready: bool = False  # the current process has become ready
    crash_streak: int = 0  # exits of processes that never became ready, since one did
    last_error: str | None = None  # why the latest process that ended ended
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
        spawn: Spawn = popen_worker,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """`spawn` starts a worker from its argv and environment; `environ` is what a worker's
        environment is chosen from (default: this process's, read at each start)."""
        self.config = config
        self.queue_url = queue_url
        self.data_dir = Path(data_dir)
        self.clock = clock
        self.hang_seconds = hang_seconds
        self._popen = spawn
        self._environ = environ
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
                self._observe(slot, status)
                return
            _signal(proc, signal.SIGKILL)
            proc.wait()
            self._exited(slot, proc, now, hung=True)
        elif proc is not None:
            self._exited(slot, proc, now)
        if now >= slot.next_start:
            self._spawn(slot, now)

    def _observe(self, slot: Slot, status: dict[str, Any]) -> None:
        """A live worker's status: once it is ready its crash streak and back-off start over."""
        if status.get("state") in ("ready", "busy"):
            _mark_ready(slot)

    def _exited(self, slot: Slot, proc: subprocess.Popen[bytes], now: float, *, hung: bool = False) -> None:
        """Record why the slot's process `proc` ended and when to start the next one."""
        status = read_status(self._status_path(slot)) or {}
        self._remember_counts(slot, status)
        if slot.ready or _became_ready(status):
            _mark_ready(slot)
        else:
            slot.crash_streak += 1
        slot.last_error = _exit_reason(status, proc.returncode, self.hang_seconds if hung else None)
        slot.proc = None
        slot.restarts += 1
        slot.next_start = now + slot.backoff
        slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)

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
            sys.executable, "-m", "swell.worker",
            "--service", slot.service.model_dump_json(), "--replica-id", slot.id,
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        env = {**self.worker_env(slot.service), QUEUE_ENV: self.queue_url}  # a password stays out of `ps`
        slot.proc = self._popen(argv, env)
        slot.started_at = now
        slot.ready = False

    def worker_env(self, service: ServiceConfig) -> dict[str, str]:
        """The environment a worker of `service` starts with (the module docstring says what)."""
        environ = os.environ if self._environ is None else self._environ
        name = service.options.get("dataset")
        datasets = {name: self.config.datasets[name]} if name in self.config.datasets else {}
        return worker_environment(environ, service.pass_env, datasets)

    def _remember_counts(self, slot: Slot, status: dict[str, Any]) -> None:
        slot.jobs["done"] += int(status.get("jobs_done", 0))
        slot.jobs["failed"] += int(status.get("jobs_failed", 0))

    def _info(self, slot: Slot) -> ReplicaInfo:
        alive = slot.proc is not None and slot.proc.poll() is None
        status = (read_status(self._status_path(slot)) or {}) if alive else {}
        state = _replica_state(status.get("state")) if alive else ReplicaState.DEAD
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
            last_error=_one_line(status["error"]) if status.get("error") else slot.last_error,
            crash_streak=0 if state in (ReplicaState.READY, ReplicaState.BUSY) else slot.crash_streak,
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


def worker_environment(
    environ: Mapping[str, str], pass_env: list[str], datasets: dict[str, DatasetConfig]
) -> dict[str, str]:
    """The part of `environ` a worker may see, plus `datasets` as JSON (see the module docstring)."""
    prefixes = PASS_PREFIXES + tuple(p.removesuffix("*") for p in pass_env if p.endswith("*"))
    if any(spec.source.startswith("s3://") for spec in datasets.values()):
        prefixes += S3_PREFIXES
    names = PASS_NAMES | {p for p in pass_env if not p.endswith("*")}
    env = {k: v for k, v in environ.items() if k in names or k.startswith(prefixes)}
    env[DATASETS_ENV] = json.dumps({name: spec.model_dump(mode="json") for name, spec in datasets.items()})
    return env


def _mark_ready(slot: Slot) -> None:
    slot.ready = True
    slot.crash_streak = 0
    slot.backoff = BACKOFF_MIN


def _became_ready(status: dict[str, Any]) -> bool:
    """Whether a worker's last status shows it got ready (its load phases are written then), for one
    that became ready and ended between two looks."""
    return status.get("state") in ("ready", "busy") or bool(status.get("phases"))


def _exit_reason(status: dict[str, Any], returncode: int | None, hung_after: float | None) -> str:
    if hung_after is not None:
        return f"stopped answering (no heartbeat for {hung_after:g} s); killed"
    if status.get("error"):
        return _one_line(status["error"])
    if returncode is not None and returncode < 0:
        return f"killed by {_signal_name(-returncode)}"
    return f"exited with status {returncode}"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:MAX_ERROR_CHARS]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _replica_state(value: object) -> ReplicaState:
    """A worker's reported state; "failed" (it could not start or is dying) reads as dead."""
    try:
        return ReplicaState(str(value or "starting"))
    except ValueError:
        return ReplicaState.DEAD
