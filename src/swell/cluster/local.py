"""Local worker processes kept at each service's replica count by a reconcile loop (the `local` Cluster).

Each worker is `python -m swell.worker` in its own process group, started with its
`swell.worker.contract.WorkerArgs` through the `spawn` factory; it publishes its `WorkerStatus` in
an atomic status file every second. The monitor restarts a worker that exits unexpectedly
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

`warm(service, models)` hands the checkpoints' datasets to a `swell.cluster.warm.Warmer`: one
background thread preloading them into `<data_dir>/cache` (the workers' node cache), one at a time,
as `swell data preload` does; `statistics().extra["warming"]` shows what it did.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swell.brain.rightsize import Policy, Sample, UsageWindow
from swell.cluster.base import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    ClusterStats,
    clamp,
    count_states,
    drained_dict,
    exit_reason,
    find_service,
    next_model,
    one_line,
    preload,
    replica_state,
    service_datasets,
    service_models,
    services_by_name,
    warm_datasets,
)
from swell.cluster.warm import Warmer
from swell.core.clock import Clock, SystemClock
from swell.core.config import ServiceConfig, SwellConfig
from swell.core.replicas import ReplicaInfo, ReplicaState
from swell.data.config import DatasetConfig
from swell.engines.results import RESULTS_ENV
from swell.worker import DATASETS_ENV
from swell.worker import contract as worker_contract
from swell.worker.contract import WorkerArgs, WorkerState, WorkerStatus
from swell.worker.status import status_path

log = logging.getLogger("swell.cluster")

HANG_SECONDS = 15.0
MONITOR_INTERVAL = 0.25

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
    model: str | None = None  # the checkpoint its worker was started holding (`next_model`)
    last_error: str | None = None  # why the latest process that ended ended
    drained: dict[str, float] | None = None  # what the last drain of this slot did
    jobs: dict[str, int] = field(default_factory=lambda: {"done": 0, "failed": 0})


class LocalSupervisor:
    """Keeps each service at its desired number of local worker processes (a `Cluster`)."""

    kind = "local"

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
        sizing: Policy | None = None,
    ) -> None:
        """`spawn` starts a worker from its argv and environment; `environ` is what a worker's
        environment is chosen from (default: this process's, read at each start); `sizing` is the
        right-sizing advice's policy (swell.brain.rightsize)."""
        self.config = config
        self.queue_url = queue_url
        self.data_dir = Path(data_dir)
        self.clock = clock
        self.hang_seconds = hang_seconds
        self._popen = spawn
        self._environ = environ
        self._services = services_by_name(config)
        self._desired = {service.name: service.replicas.min for service in config.services}
        self._models = {service.name: service_models(service) for service in config.services}
        self._started = 0
        self._usage = UsageWindow(sizing or Policy())
        self._slots: list[Slot] = []
        self._retired: list[Slot] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warmer = Warmer(config.datasets, self.data_dir)

    def start(self) -> None:
        self.reconcile()
        self._thread = threading.Thread(target=self._monitor, name="swell-supervisor", daemon=True)
        self._thread.start()

    def release(self, timeout: float = 60) -> None:
        """Local workers cannot outlive `swell up` (their parent): drained as by `stop`."""
        self.stop(timeout)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM every worker so it drains; SIGKILL what is left after `timeout` seconds."""
        self._stop.set()
        self._warmer.stop()
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

    def scale(self, service: str, replicas: int, *, models: Sequence[str] | None = None) -> None:
        """Set `service`'s replica count, clamped to its min..max; the monitor applies it. `models`
        is recorded only: one machine has one node cache, so there is no placement to choose."""
        spec = self._service(service)
        self._desired[service] = clamp(spec, replicas)
        if models is not None:
            self._models[service] = tuple(models)
        self.reconcile()

    def warm(self, service: str, models: Sequence[str]) -> None:
        """Preload the datasets of `models` into the node cache in the background (the Warmer)."""
        queued = self._warmer.submit(warm_datasets(self._service(service), models))
        if queued:
            log.info("warm %s: preloading %s", service, ", ".join(queued))

    def statistics(self) -> ClusterStats:
        """Counts over every replica; `started_warm` stays 0: a local replica's node is this one."""
        replicas = self.replicas()
        with self._lock:
            started = self._started
        return ClusterStats(
            kind=self.kind,
            desired=dict(self._desired),
            states=count_states(replicas),
            restarts=sum(r.restarts for r in replicas),
            started=started,
            started_warm=0,
            extra={
                "models": {name: list(models) for name, models in self._models.items()},
                "warming": self._warmer.statistics(),
            },
        )

    def replicas(self) -> list[ReplicaInfo]:
        with self._lock:
            return [self._info(slot) for slot in self._slots + self._retired]

    def sizing(self) -> dict[str, dict[str, Any]]:
        """Right-sizing advice per service from its replicas' usage (dry run: never applied)."""
        resources = {name: service.resources for name, service in self._services.items()}
        with self._lock:
            return self._usage.advice(resources, self.clock.now())

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
            status = self._status(slot)
            beat = (status.heartbeat if status is not None else 0.0) or slot.started_at or now
            if now - beat <= self.hang_seconds:
                self._observe(slot, status)
                record_usage(self._usage, slot.service.name, slot.id, status, now)
                return
            _signal(proc, signal.SIGKILL)
            proc.wait()
            self._exited(slot, proc, now, hung=True)
        elif proc is not None:
            self._exited(slot, proc, now)
        if now >= slot.next_start:
            self._spawn(slot, now)

    def _observe(self, slot: Slot, status: WorkerStatus | None) -> None:
        """A live worker's status: once it is ready its crash streak and back-off start over."""
        if status is not None and status.serving:
            _mark_ready(slot)

    def _exited(self, slot: Slot, proc: subprocess.Popen[bytes], now: float, *, hung: bool = False) -> None:
        """Record why the slot's process `proc` ended and when to start the next one."""
        status = self._status(slot)
        self._remember_counts(slot, status)
        if slot.ready or (status is not None and status.became_ready):
            _mark_ready(slot)
        else:
            slot.crash_streak += 1
        slot.last_error = exit_reason(status, proc.returncode, self.hang_seconds if hung else None)
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
        status = self._status(slot)
        busy = status is not None and status.state is WorkerState.BUSY
        return (busy, -(slot.started_at or 0.0))

    def _reap_retired(self) -> None:
        self._retired = [slot for slot in self._retired if slot.proc is not None and slot.proc.poll() is None]

    def _spawn(self, slot: Slot, now: float) -> None:
        path = self._status_path(slot)
        path.unlink(missing_ok=True)
        name = slot.service.name
        held = [other.model for other in self._slots if other.service.name == name and other is not slot]
        slot.model = next_model(slot.service, self._models.get(name, ()), held)
        args = self.worker_args(slot)
        env = {**self.worker_env(slot.service), **args.environment()}  # a password stays out of `ps`
        slot.proc = self._popen([sys.executable, "-m", "swell.worker", *args.argv()], env)
        slot.started_at = now
        slot.ready = False
        self._started += 1

    def worker_args(self, slot: Slot) -> WorkerArgs:
        """What the worker filling `slot` is started with (swell.worker.contract)."""
        gpus = slot.service.resources.gpus
        return WorkerArgs(
            service=slot.service,
            replica_id=slot.id,
            data_dir=self.data_dir,
            queue_url=self.queue_url,
            gpu_fraction=gpus if 0 < gpus < 1 else None,
            models=preload(slot.service, slot.model),
        )

    def worker_env(self, service: ServiceConfig) -> dict[str, str]:
        """The environment a worker of `service` starts with (the module docstring says what)."""
        environ = os.environ if self._environ is None else self._environ
        datasets = service_datasets(self.config, service)
        return worker_environment(environ, service.pass_env, datasets, self.config.cluster.results_url)

    def _remember_counts(self, slot: Slot, status: WorkerStatus | None) -> None:
        if status is not None:
            slot.jobs["done"] += status.jobs_done
            slot.jobs["failed"] += status.jobs_failed
            slot.drained = drained_dict(status) or slot.drained

    def _info(self, slot: Slot) -> ReplicaInfo:
        alive = slot.proc is not None and slot.proc.poll() is None
        status = (self._status(slot) if alive else None) or WorkerStatus()
        state = replica_state(status) if alive else ReplicaState.DEAD
        if slot.draining:
            state = ReplicaState.DRAINING if alive else ReplicaState.STOPPED
        return ReplicaInfo(
            id=slot.id,
            service=slot.service.name,
            state=state,
            pid=slot.proc.pid if slot.proc is not None else None,
            model=status.model,
            models=status.models,
            jobs_done=slot.jobs["done"] + status.jobs_done,
            jobs_failed=slot.jobs["failed"] + status.jobs_failed,
            restarts=slot.restarts,
            started_at=slot.started_at,
            last_heartbeat=status.heartbeat or None,
            phases=dict(status.phases),
            last_error=one_line(status.error) if status.error else slot.last_error,
            crash_streak=0 if state in (ReplicaState.READY, ReplicaState.BUSY) else slot.crash_streak,
            node=status.node,
            drained=drained_dict(status) or slot.drained,
        )

    def _status(self, slot: Slot) -> WorkerStatus | None:
        return worker_contract.load(self._status_path(slot))

    def _status_path(self, slot: Slot) -> Path:
        return status_path(self.data_dir, slot.id)

    def _service(self, name: str) -> ServiceConfig:
        return find_service(self._services, name)

    def __repr__(self) -> str:
        return f"LocalSupervisor(desired={self._desired}, replicas={len(self._slots)})"


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def worker_environment(
    environ: Mapping[str, str],
    pass_env: list[str],
    datasets: dict[str, DatasetConfig],
    results_url: str | None = None,
) -> dict[str, str]:
    """The part of `environ` a worker may see, plus `datasets` as JSON and the result store's URL
    (see the module docstring)."""
    prefixes = PASS_PREFIXES + tuple(p.removesuffix("*") for p in pass_env if p.endswith("*"))
    sources = [spec.source for spec in datasets.values()] + [results_url or ""]
    if any(source.startswith("s3://") for source in sources):
        prefixes += S3_PREFIXES
    names = PASS_NAMES | {p for p in pass_env if not p.endswith("*")}
    env = {k: v for k, v in environ.items() if k in names or k.startswith(prefixes)}
    env[DATASETS_ENV] = json.dumps({name: spec.model_dump(mode="json") for name, spec in datasets.items()})
    if results_url:
        env[RESULTS_ENV] = results_url
    return env


def record_usage(
    window: UsageWindow, service: str, replica: str, status: WorkerStatus | None, now: float
) -> None:
    """Add a serving replica's reported usage to the right-sizing window (loading is not load)."""
    if status is None or status.usage is None or not status.serving:
        return
    usage = status.usage
    window.add(
        service, Sample(now, replica, usage.cpu, usage.rss_bytes, usage.gpu_bytes, usage.gpu_total_bytes)
    )


def _mark_ready(slot: Slot) -> None:
    slot.ready = True
    slot.crash_streak = 0
    slot.backoff = BACKOFF_MIN
