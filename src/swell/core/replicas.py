"""What the cluster layer reports about its worker replicas, read by the gateway and the brain."""

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
    model: str | None = None
    jobs_done: int = 0
    jobs_failed: int = 0
    restarts: int = 0
    started_at: float | None = None
    last_heartbeat: float | None = None
    phases: dict[str, float] = field(default_factory=dict)  # seconds in fetch / load / warmup

    def to_public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "state": self.state.value,
            "model": self.model,
            "jobs_done": self.jobs_done,
            "jobs_failed": self.jobs_failed,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "last_heartbeat": self.last_heartbeat,
            "phases": dict(self.phases),
        }


class ReplicaView(Protocol):
    """Read-only view of the replicas a supervisor keeps."""

    def replicas(self) -> list[ReplicaInfo]: ...
