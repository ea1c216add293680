"""The worker contract: what a worker is started with (`WorkerArgs`) and what it reports (`WorkerStatus`).

Every backend that starts workers (local processes, Ray actors) and every reader of their state goes
through these two types; nobody else reads the JSON. A worker is `python -m swell.worker` with
`WorkerArgs.argv()`; the queue URL travels in the environment (`QUEUE_ENV`, it may hold a password)
and so does the one dataset's config (`DATASETS_ENV`, secrets stay out of `ps`).

`WorkerStatus` is published as JSON in an atomic, private status file (swell.worker.status moves the
bytes): `state` (a `WorkerState`), `heartbeat` (time.time() of the last write, or the file's mtime
when later: a full disk can still touch a file), `model` (the checkpoint used last) and `models`
(every checkpoint held, most recent first), `phases` (seconds in fetch / load / warmup of the first
load, as `LoadTimings.to_dict()`, then per checkpoint `load:NAME` seconds and `loads:NAME` count,
and `switch` / `switches` for the loads made while serving: swell.worker.models), the job
counters, `error` ("Type: message", one line, secrets masked) once it failed, `drained` (what a
drain did: finished, handed back, seconds) once it drained, `gpu` (the measured footprint and the
cap it set, on CUDA), `node` (where it runs), and `usage` (CPU, memory and GPU memory the process
uses, measured at each publish).
Unknown fields are ignored and a state this version does not know reads as `failed`, so a newer
worker does not break an older supervisor.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from swell.core.config import ServiceConfig
from swell.worker import QUEUE_ENV
from swell.worker.status import read_status, write_status

DRAIN_ENV = "SWELL_DRAIN_SECONDS"  # the grace period a preemption notice leaves (Kubernetes, Spot)
DEFAULT_DRAIN_SECONDS = 25.0  # under Kubernetes' default 30 s grace period, with room to exit


class WorkerState(StrEnum):
    STARTING = "starting"  # process started, nothing loaded
    LOADING = "loading"  # building and loading the engine
    READY = "ready"  # idle, pulling jobs
    BUSY = "busy"  # running a batch
    DRAINING = "draining"  # asked to stop: finishing or handing back what it holds
    STOPPED = "stopped"  # exited on purpose
    DEAD = "dead"  # a batch hung past its deadline; exits for a clean restart
    FAILED = "failed"  # could not start or died of an error; `error` says why


SERVING = frozenset({WorkerState.READY, WorkerState.BUSY})


def drain_seconds_from(environ: Mapping[str, str] | None = None) -> float:
    """The grace period `SWELL_DRAIN_SECONDS` sets (the default when unset), for whoever starts workers."""
    return _positive(
        (os.environ if environ is None else environ).get(DRAIN_ENV) or str(DEFAULT_DRAIN_SECONDS)
    )


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    """What a worker process is started with (argv; the queue URL comes from the environment)."""

    service: ServiceConfig
    replica_id: str
    data_dir: Path
    queue_url: str
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    gpu_fraction: float | None = None  # the share of one GPU this replica was given (None: whole or none)
    models: tuple[str, ...] = ()  # checkpoints to load at start, most wanted first (default: default_model)

    def argv(self) -> list[str]:
        """The arguments after `python -m swell.worker` (no queue URL: see `environment`)."""
        argv = ["--service", self.service.model_dump_json(), "--replica-id", self.replica_id]
        argv += ["--data-dir", str(self.data_dir), "--drain-seconds", f"{self.drain_seconds:g}"]
        if self.gpu_fraction is not None:
            argv += ["--gpu-fraction", f"{self.gpu_fraction:g}"]
        if self.models:
            argv += ["--models", ",".join(self.models)]
        return argv

    def environment(self) -> dict[str, str]:
        """The contract's variables, to add to the worker's environment."""
        return {QUEUE_ENV: self.queue_url}

    @classmethod
    def parse(cls, argv: list[str], environ: Mapping[str, str] | None = None) -> WorkerArgs:
        """Read `argv` (as `argv()` writes it); exits with a usage message when it is wrong."""
        environ = os.environ if environ is None else environ
        ns = _parser(environ).parse_args(argv)
        if not ns.queue:
            _parser(environ).error(f"the queue URL is needed: --queue or ${QUEUE_ENV}")
        if ns.gpu_fraction is not None and not 0 < ns.gpu_fraction <= 1:
            _parser(environ).error(f"--gpu-fraction must be in (0, 1], not {ns.gpu_fraction:g}")
        service = ServiceConfig.model_validate_json(ns.service)
        models = tuple(name for name in (ns.models or "").split(",") if name)
        unknown = [name for name in models if name not in service.models]
        if unknown:
            known = ", ".join(service.models) or "none"
            _parser(environ).error(
                f"--models names checkpoints the service has not: {unknown} (known: {known})"
            )
        return cls(
            service=service,
            models=models,
            replica_id=ns.replica_id,
            data_dir=ns.data_dir,
            queue_url=ns.queue,
            drain_seconds=ns.drain_seconds,
            gpu_fraction=ns.gpu_fraction,
        )


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swell.worker")
    parser.add_argument("--queue", default=environ.get(QUEUE_ENV), help=f"queue URL (default: ${QUEUE_ENV})")
    parser.add_argument("--service", required=True, help="the service's config as JSON")
    parser.add_argument("--replica-id", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument(
        "--drain-seconds",
        type=_positive,
        default=drain_seconds_from(environ),
        help=f"grace period after SIGTERM before what is unfinished is handed back (default: ${DRAIN_ENV})",
    )
    parser.add_argument("--gpu-fraction", type=float, default=None, help="this replica's share of a GPU")
    parser.add_argument("--models", default="", help="checkpoints to load at start, comma-separated")
    return parser


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


@dataclass(frozen=True, slots=True)
class Drained:
    """What a drain did: jobs finished within the grace period, jobs handed back, seconds it took."""

    finished: int = 0
    handed_back: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class GpuShare:
    """On CUDA: the engine's measured footprint after load and the cap the worker set from it."""

    footprint_bytes: int
    total_bytes: int
    cap_fraction: float


@dataclass(frozen=True, slots=True)
class Usage:
    """What the worker process used, measured at each publish (swell.cluster.usage): CPU cores over
    the interval since the previous one, resident memory, and the GPU memory torch holds (None
    unless the engine uses CUDA) with the GPU's total. The right-sizing advice reads it."""

    cpu: float = 0.0
    rss_bytes: int = 0
    gpu_bytes: int | None = None
    gpu_total_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    state: WorkerState = WorkerState.STARTING
    heartbeat: float = 0.0
    model: str | None = None  # the checkpoint used last (the first of `models`)
    models: tuple[str, ...] = ()  # the checkpoints held, most recently used first
    phases: dict[str, float] = field(default_factory=dict)
    jobs_done: int = 0
    jobs_failed: int = 0
    jobs_handed_back: int = 0
    error: str | None = None
    drained: Drained | None = None
    gpu: GpuShare | None = None
    node: str | None = None
    usage: Usage | None = None

    @property
    def serving(self) -> bool:
        return self.state in SERVING

    @property
    def became_ready(self) -> bool:
        """Whether this worker got ready at some point: it is serving, or its load phases are written
        (they are, once loaded), for a worker that became ready and ended between two looks."""
        return self.serving or bool(self.phases)

    def evolve(self, **changes: Any) -> WorkerStatus:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerStatus:
        """A status from its JSON form; tolerant of missing and unknown fields (see the docstring)."""
        beat = data.get("heartbeat")
        return cls(
            state=_state(data.get("state")),
            heartbeat=float(beat) if isinstance(beat, int | float) else 0.0,
            model=_text(data.get("model")),
            models=tuple(str(m) for m in data.get("models") or () if m is not None),
            phases={str(k): float(v) for k, v in dict(data.get("phases") or {}).items()},
            jobs_done=int(data.get("jobs_done") or 0),
            jobs_failed=int(data.get("jobs_failed") or 0),
            jobs_handed_back=int(data.get("jobs_handed_back") or 0),
            error=_text(data.get("error")),
            drained=Drained(**data["drained"]) if isinstance(data.get("drained"), dict) else None,
            gpu=GpuShare(**data["gpu"]) if isinstance(data.get("gpu"), dict) else None,
            node=_text(data.get("node")),
            usage=_usage(data.get("usage")),
        )


def _state(value: object) -> WorkerState:
    if value is None:
        return WorkerState.STARTING
    try:
        return WorkerState(str(value))
    except ValueError:
        return WorkerState.FAILED


def _usage(value: object) -> Usage | None:
    """A `Usage` from its JSON form; fields this version does not know are left out."""
    if not isinstance(value, dict):
        return None
    return Usage(**{k: v for k, v in value.items() if k in Usage.__dataclass_fields__})


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def publish(path: Path, status: WorkerStatus) -> None:
    """Write `status` to the status file at `path` atomically (OSError on a full disk), with this
    process's `usage` measured now unless `status` carries one."""
    if status.usage is None:
        from swell.cluster.usage import METER

        status = status.evolve(usage=METER.read())
    write_status(path, status.to_dict())


def load(path: Path) -> WorkerStatus | None:
    """The status last published at `path`, or None when there is none (yet)."""
    data = read_status(path)
    return None if data is None else WorkerStatus.from_dict(data)
