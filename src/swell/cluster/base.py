"""The cluster seam: what starts, watches, scales and stops worker replicas, and the registry of backends.

    Cluster                       one protocol; the brain, the gateway and `swell up` depend on it
    ├── local   LocalSupervisor   worker processes on this machine (swell.cluster.local)
    ├── ray     RayCluster        one Ray actor per replica, placed by resources (swell.cluster.ray)
    ├── fake    FakeCluster       deterministic, on an injected clock, for the brain's tests
    └── "package.module:attr"     a user's backend, called like the others

Every backend is built as `factory(config, queue_url, data_dir, clock=clock)` and keeps each
service at its desired replica count (clamped to `replicas.min..max`) by a reconcile loop: replicas
that die or stop answering are restarted with back-off, and a scale-down drains (the worker stops
leasing, finishes or hands back what it holds, exits). `replicas()` reports one `ReplicaInfo` per
replica, including those draining; `statistics()` a frozen `ClusterStats`.

`scale(service, n, models=...)` names the models the replicas should hold (the dataset names of
the data plane): a backend that knows which nodes hold which model warm prefers those nodes for
them (Ray); the local backend has one node and records them only.

`warm(service, models)` names the checkpoints every node should keep cached (the brain's
`Plan.warm`): their datasets (`model_datasets`) are fetched into the node cache ahead of a replica
needing them, best effort and in the background; what is already cached costs nothing. The local
backend preloads them (swell.cluster.warm); Ray logs the set only; the fake records the calls.
"""

from __future__ import annotations

import importlib
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from swell.core.clock import Clock, SystemClock
from swell.core.config import ServiceConfig, SwellConfig
from swell.core.errors import ConfigError, MissingExtra, ServiceNotFound
from swell.core.replicas import ReplicaInfo, ReplicaState
from swell.data.config import DatasetConfig
from swell.worker.contract import WorkerState, WorkerStatus

MAX_ERROR_CHARS = 1000
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0

CLUSTERS: dict[str, str] = {
    "local": "swell.cluster.local:LocalSupervisor",
    "ray": "swell.cluster.ray:RayCluster",
    "fake": "swell.cluster.fake:FakeCluster",
}
EXTRAS = {"ray": "ray"}  # what `pip install 'swell[...]'` a backend needs


@dataclass(frozen=True, slots=True)
class ClusterStats:
    """What a backend reports about itself; the same fields for every backend."""

    kind: str
    desired: dict[str, int]
    states: dict[str, int]  # replicas per ReplicaState value
    restarts: int
    started: int  # replica starts that were placed (every restart counts)
    started_warm: int  # of those, the ones placed on a node whose cache held the replica's model
    nodes: int = 1
    pending: int = 0  # replicas waiting for a node with room (Ray)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def warm_share(self) -> float | None:
        """The share of replica starts that found their model warm; None before any start with a model."""
        return self.started_warm / self.started if self.started else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "desired": dict(self.desired),
            "states": dict(self.states),
            "restarts": self.restarts,
            "started": self.started,
            "started_warm": self.started_warm,
            "warm_share": self.warm_share,
            "nodes": self.nodes,
            "pending": self.pending,
            **self.extra,
        }


@runtime_checkable
class Cluster(Protocol):
    """Keeps each service at its desired replica count (see the module docstring)."""

    def start(self) -> None:
        """Start the reconcile loop and the services' minimum replicas."""

    def stop(self, timeout: float = 60) -> None:
        """Drain every replica; kill what is left after `timeout` seconds."""

    def release(self, timeout: float = 60) -> None:
        """Stop supervising as the gateway exits. Replicas that can outlive it (Ray's detached
        actors) keep serving, for the next gateway to adopt; the others are drained as by `stop`."""

    def scale(self, service: str, replicas: int, *, models: Sequence[str] | None = None) -> None:
        """Set `service`'s replica count, clamped to its min..max; the reconcile loop applies it."""

    def warm(self, service: str, models: Sequence[str]) -> None:
        """Keep these checkpoints' datasets in the node cache, fetched ahead of a replica needing them
        (best effort, in the background; what is already cached costs nothing)."""

    def desired(self, service: str) -> int:
        """The replica count `service` is kept at now."""
        ...

    def replicas(self) -> list[ReplicaInfo]:
        """Every replica, draining ones included."""
        ...

    def statistics(self) -> ClusterStats: ...


ClusterFactory = Callable[..., Cluster]


def open_cluster(
    config: SwellConfig, queue_url: str, data_dir: Path, *, clock: Clock = SystemClock(), **options: Any
) -> Cluster:
    """The backend `config.cluster.kind` names (`local`, `ray`, `fake` or `package.module:attr`)."""
    factory = cluster_factory(config.cluster.kind)
    return factory(config, queue_url, Path(data_dir), clock=clock, **options)


def cluster_factory(kind: str) -> ClusterFactory:
    """Import the backend `kind` names; ConfigError naming `cluster.kind` when it cannot be."""
    target = CLUSTERS.get(kind, kind)
    if ":" not in target:
        known = ", ".join(sorted(CLUSTERS))
        message = f"unknown cluster kind {kind!r}; use {known} or package.module:attr"
        raise ConfigError(message, key="cluster.kind")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if kind in EXTRAS and exc.name and not exc.name.startswith("swell"):
            raise MissingExtra(f"the {kind} cluster backend", EXTRAS[kind]) from exc
        raise ConfigError(f"cannot import {module_name!r}: {exc}", key="cluster.kind") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{target!r} is not a callable in {module_name!r}", key="cluster.kind")
    return factory  # type: ignore[no-any-return]


# -- shared by the backends ---------------------------------------------------------------------


def clamp(service: ServiceConfig, replicas: int) -> int:
    return max(service.replicas.min, min(service.replicas.max, replicas))


def services_by_name(config: SwellConfig) -> dict[str, ServiceConfig]:
    return {service.name: service for service in config.services}


def find_service(services: dict[str, ServiceConfig], name: str) -> ServiceConfig:
    if name not in services:
        raise ServiceNotFound(f"no service {name!r}", field="service")
    return services[name]


def service_models(service: ServiceConfig) -> tuple[str, ...]:
    """The models a service's replicas hold by default: its checkpoints (the keys of `models`) when
    it lists several, else its `options.dataset` (the dataset is the model), if any."""
    if service.models:
        return tuple(service.models)
    name = service.options.get("dataset")
    return (str(name),) if name else ()


def model_datasets(service: ServiceConfig, model: str) -> tuple[str, ...]:
    """The datasets a replica needs on its node to hold `model` warm (the node-cache check): the
    `dataset` option of that checkpoint's merged options; for a service without `models`, `model`
    is already a dataset name (what `service_models` returns). Empty when it names no dataset."""
    if not service.models:
        return (model,)
    if model not in service.models:
        return ()
    name = service.model_options(model).get("dataset")
    return (str(name),) if name else ()


def warm_datasets(service: ServiceConfig, models: Sequence[str]) -> tuple[str, ...]:
    """The datasets that hold `models` of `service` (`model_datasets` of each), once each, in order."""
    return tuple(dict.fromkeys(name for model in models for name in model_datasets(service, model)))


def next_model(service: ServiceConfig, told: Sequence[str], held: Sequence[str | None]) -> str | None:
    """The checkpoint a new replica of `service` is started holding: of the models it was told
    (`scale(models=...)`, the brain's placement), the one the fewest of its replicas (`held`, each
    one's model) hold now, the first on a tie; so n replicas told k models spread over all k. None
    when it was told none."""
    if not told:
        return None
    return min(told, key=lambda model: (held.count(model), told.index(model)))


def preload(service: ServiceConfig, model: str | None) -> tuple[str, ...]:
    """What a worker loads at start to hold `model` (`WorkerArgs.models`): the checkpoint when the
    service lists `models`; nothing otherwise (a dataset-only service holds its one model anyway)."""
    return (model,) if model is not None and model in service.models else ()


def service_datasets(config: SwellConfig, service: ServiceConfig) -> dict[str, DatasetConfig]:
    """The dataset configs a worker of `service` needs: the one its `options` name and each
    checkpoint's (what `model_datasets` lists)."""
    names = [service.options.get("dataset"), *(opts.get("dataset") for opts in service.models.values())]
    return {
        name: config.datasets[name] for name in names if isinstance(name, str) and name in config.datasets
    }


def replica_state(status: WorkerStatus) -> ReplicaState:
    """A live worker's reported state; `failed` or `dead` (it is dying) reads as dead."""
    if status.state in (WorkerState.FAILED, WorkerState.DEAD):
        return ReplicaState.DEAD
    return ReplicaState(status.state.value)


def one_line(text: object) -> str:
    return " ".join(str(text).split())[:MAX_ERROR_CHARS]


def exit_reason(status: WorkerStatus | None, returncode: int | None, hung_after: float | None) -> str:
    """Why a worker ended: it hung, the error it reported, the signal that killed it, its exit status."""
    if hung_after is not None:
        return f"stopped answering (no heartbeat for {hung_after:g} s); killed"
    if status is not None and status.error:
        return one_line(status.error)
    if returncode is not None and returncode < 0:
        return f"killed by {signal_name(-returncode)}"
    return f"exited with status {returncode}"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def count_states(replicas: Sequence[ReplicaInfo]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for replica in replicas:
        counts[replica.state.value] = counts.get(replica.state.value, 0) + 1
    return counts


def drained_dict(status: WorkerStatus | None) -> dict[str, float] | None:
    if status is None or status.drained is None:
        return None
    drained = status.drained
    return {"finished": drained.finished, "handed_back": drained.handed_back, "seconds": drained.seconds}
