"""`FakeCluster`: a deterministic Cluster on an injected clock, shipped for the brain's tests.

No processes and no threads: each call reads the clock and moves every replica along its life,
so a test (or the simulator) drives it by advancing a `ManualClock`. A replica is `loading` for
`load_seconds` after it starts (`warm_load_seconds` instead when a node holds its model warm; the
fake has `nodes` nodes and `warm` maps a node to the models it holds), then `ready`. A scale-down
drains the idlest, newest replicas first: `draining` for `drain_seconds`, then `stopped`. `kill`
makes a replica `dead` and, after `restart_seconds`, starts it again (counting a restart), as the
real backends do. `set_busy` marks a ready replica busy (the brain reads busy replicas as serving).

Placement follows the real backends' rule: a replica that should hold a model goes to a node that
holds it warm when one has room (each node takes `node_slots` replicas), else to the emptiest node;
`statistics().started_warm` counts the starts that found their model warm.

`warm(service, models)` is recorded in `warm_calls` (the brain's tests read it); nothing is fetched,
and a node's warm set changes only by `add_warm`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from swell.cluster.base import (
    ClusterStats,
    clamp,
    count_states,
    find_service,
    service_models,
    services_by_name,
)
from swell.core.clock import Clock, SystemClock
from swell.core.config import ServiceConfig, SwellConfig
from swell.core.replicas import ReplicaInfo, ReplicaState


@dataclass
class FakeReplica:
    id: str
    service: str
    model: str | None
    node: str
    warm: bool | None
    started_at: float
    ready_at: float
    state: ReplicaState = ReplicaState.LOADING
    busy: bool = False
    stop_at: float | None = None
    restart_at: float | None = None
    restarts: int = 0
    last_error: str | None = None
    phases: dict[str, float] = field(default_factory=dict)


class FakeCluster:
    """A Cluster whose replicas live on virtual time (see the module docstring)."""

    kind = "fake"

    def __init__(
        self,
        config: SwellConfig,
        queue_url: str = "memory://",
        data_dir: Path | str = ".",
        *,
        clock: Clock = SystemClock(),
        load_seconds: float = 0.0,
        warm_load_seconds: float | None = None,
        drain_seconds: float = 0.0,
        restart_seconds: float = 0.5,
        nodes: int = 1,
        node_slots: int = 1_000_000,
        warm: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.config, self.clock = config, clock
        self.load_seconds, self.drain_seconds, self.restart_seconds = (
            load_seconds,
            drain_seconds,
            restart_seconds,
        )
        self.warm_load_seconds = load_seconds if warm_load_seconds is None else warm_load_seconds
        self.nodes = [f"node-{i}" for i in range(nodes)]
        self.node_slots = node_slots
        self.node_warm: dict[str, set[str]] = {node: set(models) for node, models in (warm or {}).items()}
        self._services = services_by_name(config)
        self._desired = {service.name: service.replicas.min for service in config.services}
        self._models = {service.name: service_models(service) for service in config.services}
        self._replicas: list[FakeReplica] = []
        self._ids = itertools.count(1)
        self._started = self._started_warm = 0
        self._running = False
        self.warm_calls: list[tuple[str, tuple[str, ...]]] = []

    def start(self) -> None:
        self._running = True
        self.reconcile()

    def release(self, timeout: float = 60) -> None:
        self.stop(timeout)

    def stop(self, timeout: float = 60) -> None:
        self._running = False
        now = self.clock.now()
        for replica in self._replicas:
            replica.state, replica.stop_at = ReplicaState.STOPPED, now

    def scale(self, service: str, replicas: int, *, models: Sequence[str] | None = None) -> None:
        spec = find_service(self._services, service)
        self._desired[service] = clamp(spec, replicas)
        if models is not None:
            self._models[service] = tuple(models)
        self.reconcile()

    def warm(self, service: str, models: Sequence[str]) -> None:
        """Recorded in `warm_calls`; the fake fetches nothing (`add_warm` makes a node warm)."""
        find_service(self._services, service)
        self.warm_calls.append((service, tuple(models)))

    def desired(self, service: str) -> int:
        return self._desired[find_service(self._services, service).name]

    def replicas(self) -> list[ReplicaInfo]:
        self.reconcile()
        return [self._info(replica) for replica in self._replicas]

    def statistics(self) -> ClusterStats:
        replicas = self.replicas()
        return ClusterStats(
            kind=self.kind,
            desired=dict(self._desired),
            states=count_states(replicas),
            restarts=sum(r.restarts for r in replicas),
            started=self._started,
            started_warm=self._started_warm,
            nodes=len(self.nodes),
        )

    # -- test controls ------------------------------------------------------------------------

    def kill(self, replica_id: str, error: str = "killed by SIGKILL") -> None:
        """The replica's process dies; it restarts `restart_seconds` later."""
        replica = self._find(replica_id)
        replica.state, replica.busy, replica.last_error = ReplicaState.DEAD, False, error
        replica.restart_at = self.clock.now() + self.restart_seconds

    def set_busy(self, replica_id: str, busy: bool = True) -> None:
        self._find(replica_id).busy = busy

    def add_warm(self, node: str, model: str) -> None:
        """`node`'s cache now holds `model` (a preload finished)."""
        self.node_warm.setdefault(node, set()).add(model)

    # -- the reconcile pass -------------------------------------------------------------------

    def reconcile(self) -> None:
        if not self._running:
            return
        now = self.clock.now()
        for replica in self._replicas:
            self._advance(replica, now)
        for name, want in self._desired.items():
            self._resize(self._services[name], want, now)

    def _advance(self, replica: FakeReplica, now: float) -> None:
        if replica.state is ReplicaState.LOADING and now >= replica.ready_at:
            replica.state = ReplicaState.READY
            replica.phases = {"fetch": 0.0, "load": replica.ready_at - replica.started_at, "warmup": 0.0}
        elif (
            replica.state is ReplicaState.DRAINING and replica.stop_at is not None and now >= replica.stop_at
        ):
            replica.state = ReplicaState.STOPPED
        elif (
            replica.state is ReplicaState.DEAD
            and replica.restart_at is not None
            and now >= replica.restart_at
        ):
            replica.restarts += 1
            self._place(replica, now)

    def _resize(self, service: ServiceConfig, want: int, now: float) -> None:
        live = [r for r in self._replicas if r.service == service.name and _counted(r)]
        for _ in range(want - len(live)):
            replica = FakeReplica(f"{service.name}-{next(self._ids)}", service.name, None, "", None, now, now)
            self._replicas.append(replica)
            self._place(replica, now)
        for replica in sorted(live, key=lambda r: (r.busy, -r.started_at))[: max(0, len(live) - want)]:
            replica.state, replica.busy = ReplicaState.DRAINING, False
            replica.stop_at = now + self.drain_seconds
            self._advance(replica, now)

    def _place(self, replica: FakeReplica, now: float) -> None:
        models = self._models.get(replica.service, ())
        replica.model = models[0] if models else None
        replica.node = self._node_for(replica.model, exclude=replica)
        replica.warm = (
            None if replica.model is None else replica.model in self.node_warm.get(replica.node, set())
        )
        load = self.warm_load_seconds if replica.warm else self.load_seconds
        replica.started_at, replica.ready_at = now, now + load
        replica.state, replica.restart_at = ReplicaState.LOADING, None
        self._started += 1
        self._started_warm += int(bool(replica.warm))
        self._advance(replica, now)

    def _node_for(self, model: str | None, *, exclude: FakeReplica) -> str:
        load = {node: 0 for node in self.nodes}
        for other in self._replicas:
            if other is not exclude and other.node in load and _counted(other):
                load[other.node] += 1
        free = [node for node in self.nodes if load[node] < self.node_slots] or self.nodes
        warm = [node for node in free if model is not None and model in self.node_warm.get(node, set())]
        return min(warm or free, key=lambda node: (load[node], node))

    def _info(self, replica: FakeReplica) -> ReplicaInfo:
        state = ReplicaState.BUSY if replica.state is ReplicaState.READY and replica.busy else replica.state
        return ReplicaInfo(
            id=replica.id,
            service=replica.service,
            state=state,
            model=replica.model,
            models=(replica.model,) if replica.model else (),
            restarts=replica.restarts,
            started_at=replica.started_at,
            last_heartbeat=self.clock.now() if _counted(replica) else None,
            phases=dict(replica.phases),
            last_error=replica.last_error,
            node=replica.node,
            warm=replica.warm,
        )

    def _find(self, replica_id: str) -> FakeReplica:
        for replica in self._replicas:
            if replica.id == replica_id:
                return replica
        raise KeyError(replica_id)

    def __repr__(self) -> str:
        return (
            f"FakeCluster(desired={self._desired}, replicas={len(self._replicas)}, now={self.clock.now():g})"
        )


def _counted(replica: FakeReplica) -> bool:
    """Whether a replica fills one of its service's places (a dead one is restarted in place)."""
    return replica.state not in (ReplicaState.DRAINING, ReplicaState.STOPPED)


__all__ = ["FakeCluster", "FakeReplica"]
