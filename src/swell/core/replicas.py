"""What the cluster layer reports about its worker replicas, read by the gateway and the brain.

Every backend (swell.cluster: local processes, Ray actors, the fake) reports `ReplicaInfo` rows built
from the worker's `swell.worker.contract.WorkerStatus`, so one reader serves all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class ReplicaState(StrEnum):
    STARTING = "starting"  # process spawned, engine not loaded yet
    LOADING = "loading"  # fetching and loading weights
    READY = "ready"  # idle, pulling jobs
    BUSY = "busy"  # running a batch
    DRAINING = "draining"  # finishing its job before it exits
    STOPPED = "stopped"  # exited on purpose
    DEAD = "dead"  # died or stopped answering; the supervisor restarts it


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    id: str
    service: str
    state: ReplicaState
    pid: int | None = None
    model: str | None = None  # the checkpoint it used last (the first of `models`)
    models: tuple[str, ...] = ()  # the checkpoints it holds loaded, most recently used first
    jobs_done: int = 0
    jobs_failed: int = 0
    restarts: int = 0
    started_at: float | None = None
    last_heartbeat: float | None = None
    phases: dict[str, float] = field(default_factory=dict)  # seconds in fetch / load / warmup
    last_error: str | None = None  # why the latest process of this replica failed (load or run)
    crash_streak: int = 0  # exits without ever becoming ready, since it was last ready
    node: str | None = None  # where it runs (a host name, a Ray node id)
    warm: bool | None = None  # placed on a node whose cache held its model (None: no model to hold)
    drained: dict[str, float] | None = None  # the last drain: {finished, handed_back, seconds}

    def to_public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "state": self.state.value,
            "model": self.model,
            "models": list(self.models),
            "jobs_done": self.jobs_done,
            "jobs_failed": self.jobs_failed,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "last_heartbeat": self.last_heartbeat,
            "phases": dict(self.phases),
            "last_error": self.last_error,
            "crash_streak": self.crash_streak,
            "node": self.node,
            "warm": self.warm,
            "drained": dict(self.drained) if self.drained is not None else None,
        }


CRASH_LOOP = 3  # consecutive failed starts after which a service with no ready replica refuses submits


def unavailable_reason(
    replicas: list[ReplicaInfo], service: str, *, crash_loop: int = CRASH_LOOP
) -> str | None:
    """Why `service` cannot run jobs now, or None: it has replicas, none is ready or busy, and every one
    has failed `crash_loop` starts in a row (a misconfigured engine, a model that does not load)."""
    mine = [r for r in replicas if r.service == service and r.state is not ReplicaState.STOPPED]
    if not mine or any(r.state in (ReplicaState.READY, ReplicaState.BUSY) for r in mine):
        return None
    if any(r.crash_streak < crash_loop for r in mine):
        return None
    error = next((r.last_error for r in mine if r.last_error), "no error was reported")
    return f"service {service!r} is failing: its replicas crashed {crash_loop}+ times in a row ({error})"


class ReplicaView(Protocol):
    """Read-only view of the replicas a supervisor keeps."""

    def replicas(self) -> list[ReplicaInfo]: ...
