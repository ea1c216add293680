"""The `ray` Cluster: each replica is a Ray actor, placed by the service's resources, that holds one
`python -m swell.worker` process on its node; every worker pulls from the one shared queue.

    swell.yaml:  cluster: {kind: ray, address: "ray://head:10001" | "auto", namespace: swell,
                           results_url: "s3://bucket/results"}

Placement: the actor asks Ray for the service's `resources:` (`num_cpus`, `num_gpus`, a fraction
shares a GPU, `memory`, custom resources; `gpu_kind: K` adds the custom resource `swell_gpu_K`,
which the nodes of that GPU kind advertise). A replica that holds a model (the service's
`options.dataset`, or the `models` given to `scale`) prefers a node whose node cache holds it warm
(swell.cluster.placement): softly by default, only such a node with `warm_cache: hard`. A node says
it holds a model warm either by a `swell_warm_<dataset>` resource given at `ray start` (a node whose
init step preloaded it, as the Kubernetes manifests do) or by a marker file a replica writes in the
node's data directory once its worker has loaded the model (`<data_dir>/warm/<node id>/<dataset>`).
`statistics()` counts the replica starts that landed on a warm node (`started_warm`, `warm_share`).
Fractional GPUs are packed by measured memory once a replica has reported its footprint
(swell.cluster.gpu).

The queue must be one every node reaches: a `redis://` (or `rediss://`) URL. A SQLite file lives on
one machine's disk and cannot be shared across nodes, so `start` refuses it (and `memory://`). A
backlog drains into a new replica at once, since it leases from the same queue. Result files go to
`cluster.results_url` (SWELL_RESULTS_URL for the worker's result store) when nodes share no disk.

Health: the supervisor polls each actor for its worker's `WorkerStatus` (through the actor, not a
shared disk). A replica whose actor died (its node vanished, say), whose worker exited, or whose
heartbeat is older than `hang_seconds` is restarted with back-off, on whatever node has room. A node
that vanishes loses no job: the leases of what its workers held expire and the jobs run elsewhere.
Scale-down drains (SIGTERM to the worker: it stops leasing, finishes or hands back what it holds,
exits), then the actor is killed; `stop` drains every replica and kills what is left at `timeout`.

Authentication: Ray 2.5x+ clusters may require a token. The mode is made explicit before
`ray.init`: `RAY_AUTH_MODE` is kept when set, else set to `token`; in token mode a token must come
from `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token`, or `start` says what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from swell.brain.rightsize import Policy, UsageWindow
from swell.cluster import gpu, placement
from swell.cluster.base import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    ClusterStats,
    clamp,
    count_states,
    drained_dict,
    exit_reason,
    find_service,
    model_datasets,
    next_model,
    one_line,
    preload,
    replica_state,
    service_datasets,
    service_models,
    services_by_name,
)
from swell.cluster.local import record_usage, worker_environment
from swell.core.clock import Clock, SystemClock
from swell.core.config import ServiceConfig, SwellConfig
from swell.core.errors import ConfigError
from swell.core.replicas import ReplicaInfo, ReplicaState
from swell.data.config import DatasetConfig
from swell.worker.contract import GpuShare, WorkerArgs, WorkerStatus, drain_seconds_from
from swell.worker.contract import load as load_status
from swell.worker.status import status_path

log = logging.getLogger("swell.cluster")

HANG_SECONDS = 15.0
ADOPT_SECONDS = 10.0  # how long a starting supervisor waits for a left replica to say who it is
MARK_SECONDS = 30.0  # how often a replica looks again for the chunks of a dataset not marked warm
POLL_SECONDS = 0.5
SHARED_SCHEMES = ("redis", "rediss")
RESULTS_ENV = "SWELL_RESULTS_URL"
NODE_ENV = "SWELL_NODE_ID"
AUTH_MODES = ("token", "disabled")


# -- on the node: the actor that holds a worker process -----------------------------------------


class ReplicaHost:
    """Lives in the replica's Ray actor: starts the worker on this node and answers for it.

    What may hold a secret (the queue URL with its Redis password, the dataset's S3 keys, the
    result store's URL) comes as `private`: a list holding one ObjectRef to a `Private` dict put in
    Ray's object store by the supervisor. A nested ref is never inlined, so the actor's creation
    task spec (what Ray's GCS, dashboard and state API keep and show) carries only the object's id;
    `args` comes with its queue URL blanked."""

    def __init__(self, args: WorkerArgs, pass_env: list[str], private: list[Any]) -> None:
        secret: Private = ray.get(private[0])
        self.args = replace(args, queue_url=secret["queue_url"])
        self.node = ray.get_runtime_context().get_node_id()
        self.fingerprint = fingerprint(secret["queue_url"], secret["env"].get(RESULTS_ENV))
        worker_env = host_environment(os.environ, pass_env, secret, self.args, self.node)
        argv = [sys.executable, "-m", "swell.worker", *self.args.argv()]
        self.path = status_path(Path(args.data_dir), args.replica_id)
        self.path.unlink(missing_ok=True)  # a previous life's status must not speak for this one
        self.proc = subprocess.Popen(argv, start_new_session=True, env=worker_env)
        self.started = time.time()
        self.draining = False
        self._cache: Any = None
        self._checked: dict[str, float] = {}  # dataset -> when its chunks were last looked for

    def identity(self) -> dict[str, Any]:
        """What a supervisor that did not start this replica needs to adopt it (`RayCluster.start`)."""
        return {
            "replica_id": self.args.replica_id,
            "service": self.args.service.model_dump_json(),
            "fingerprint": self.fingerprint,
            "started": self.started,
            "draining": self.draining,
        }

    def status(self) -> dict[str, Any]:
        """The worker's last status, its exit status (None while it runs) and this node's warm models."""
        status = load_status(self.path)
        if status is not None and status.serving and status.model:
            self._mark_warm(status.model)
        return {
            "node": self.node,
            "pid": self.proc.pid,
            "returncode": self.proc.poll(),
            "status": status.to_dict() if status is not None else None,
            "warm": self.warm_models(),
            "now": time.time(),
        }

    def warm_models(self) -> list[str]:
        """The datasets this node's cache holds warm (its markers; eviction removes them)."""
        with contextlib.suppress(OSError, ImportError):
            return list(self._node_cache().warm(self.node))
        return []

    def drain(self) -> None:
        self.draining = True
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    def _mark_warm(self, model: str) -> None:
        """Leave a warm marker for each dataset of `model` (and of the service's models) whose every
        chunk the node cache holds; looked for at most every `MARK_SECONDS` while it has none."""
        now, warm = time.monotonic(), set(self.warm_models())
        for name in dict.fromkeys([model, *service_models(self.args.service)]):
            for dataset in model_datasets(self.args.service, name):
                if dataset in warm or now - self._checked.get(dataset, -MARK_SECONDS) < MARK_SECONDS:
                    continue
                self._checked[dataset] = now
                with contextlib.suppress(OSError, ImportError, ValueError):
                    mark_if_cached(self._node_cache(), self.node, dataset)

    def _node_cache(self) -> Any:
        if self._cache is None:
            from swell.data.cache import NodeCache

            self._cache = NodeCache(Path(self.args.data_dir) / "cache")
        return self._cache


def mark_if_cached(cache: Any, node: str, dataset: str) -> bool:
    """Mark `dataset` warm on `node` when the node cache (a `NodeCache`) holds every chunk of one of
    its stored manifests; a dataset the cache never saw (a file:// one, read in place) gets none."""
    from swell.data.datasets import stored_manifests
    from swell.data.sources import ObjectInfo

    for manifest in (m for m in stored_manifests(cache) if m.name == dataset):
        hashes = [
            cache.chunk_hashes(manifest.source, ObjectInfo(f.path, f.size, f.etag)) for f in manifest.files
        ]
        if all(h is not None for h in hashes):
            cache.mark_warm(node, dataset, [h for file in hashes for h in file or ()])
            return True
    return False


Private = dict[str, Any]  # {"queue_url": str, "datasets": {name: config as JSON}, "env": {name: value}}


def host_environment(
    environ: Mapping[str, str], pass_env: list[str], secret: Private, args: WorkerArgs, node: str
) -> dict[str, str]:
    """The worker's environment on its node: what `worker_environment` lets through of the node's
    own (its AWS_* too when the datasets or the result store are on S3), plus the contract's."""
    datasets = {k: DatasetConfig.model_validate(v) for k, v in secret["datasets"].items()}
    env = worker_environment(environ, pass_env, datasets, secret["env"].get(RESULTS_ENV))
    return env | {**args.environment(), **secret["env"], NODE_ENV: node}


def fingerprint(queue_url: str, results_url: str | None) -> str:
    """Which queue and result store a replica serves, without saying them: adoption compares it."""
    return hashlib.sha256(f"{queue_url}\0{results_url or ''}".encode()).hexdigest()[:32]


# -- the supervisor side ------------------------------------------------------------------------


@dataclass
class RaySlot:
    """One replica position: the actor that fills it now and its history."""

    id: str
    service: ServiceConfig
    actor: Any = None
    poll: Any = None  # the outstanding status() call
    node: str | None = None
    pid: int | None = None
    placed_warm: bool | None = None  # placement aimed at a warm node (None: no model)
    warm_nodes: frozenset[str] = frozenset()  # nodes that held the model when it was placed
    model: str | None = None
    started_at: float | None = None
    last_seen: float | None = None  # clock time of the last status answer
    beat_age: float = 0.0  # how old the worker's heartbeat was at that answer (node clock)
    restarts: int = 0
    next_start: float = 0.0
    backoff: float = BACKOFF_MIN
    draining: bool = False
    ready: bool = False
    counted: bool = False  # its start was counted in the warm statistics
    crash_streak: int = 0
    adopted: bool = False  # taken over from a previous supervisor (`RayCluster.start`)
    last_error: str | None = None
    wait: str | None = None  # why it is not placed (warm_cache: hard and no warm node)
    status: WorkerStatus | None = None
    returncode: int | None = None
    jobs: dict[str, int] = field(default_factory=lambda: {"done": 0, "failed": 0})
    drained: dict[str, float] | None = None

    @property
    def warm(self) -> bool | None:
        """Whether this start landed on a node holding its model warm (known once placed)."""
        if self.model is None:
            return None
        return self.node is not None and self.node in self.warm_nodes


class RayCluster:
    """Keeps each service at its desired number of replicas on a Ray cluster (a `Cluster`)."""

    kind = "ray"

    def __init__(
        self,
        config: SwellConfig,
        queue_url: str,
        data_dir: Path,
        *,
        clock: Clock = SystemClock(),
        hang_seconds: float = HANG_SECONDS,
        poll_seconds: float = POLL_SECONDS,
        drain_seconds: float | None = None,
        address: str | None = None,
        environ: MutableMapping[str, str] | None = None,
        sizing: Policy | None = None,
    ) -> None:
        """`data_dir` is the data directory's path on every node (a node-local cache volume);
        `address` overrides `cluster.address`; `environ` is where Ray's variables are set; `sizing`
        is the right-sizing advice's policy (swell.brain.rightsize)."""
        self.config, self.queue_url, self.data_dir, self.clock = config, queue_url, Path(data_dir), clock
        self.hang_seconds, self.poll_seconds, self.drain_seconds = hang_seconds, poll_seconds, drain_seconds
        self.address = address or config.cluster.address or "auto"
        self._environ = os.environ if environ is None else environ
        self._services = services_by_name(config)
        self._desired = {service.name: service.replicas.min for service in config.services}
        self._models = {service.name: service_models(service) for service in config.services}
        self._measured: dict[str, GpuShare] = {}
        self._usage = UsageWindow(sizing or Policy())
        self._node_warm: dict[str, set[str]] = {}
        self._warm_wanted: dict[str, tuple[str, ...]] = {}
        self._slots: list[RaySlot] = []
        self._retired: list[RaySlot] = []
        self._started = self._started_warm = 0
        self._nodes = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._remote: Any = None

    # -- the Cluster protocol -----------------------------------------------------------------

    def start(self) -> None:
        require_shared_queue(self.queue_url)
        connect(self.address, self.config.cluster.namespace, self._environ)
        if self.config.cluster.results_url is None:
            log.warning("cluster.results_url is not set: result files stay on the nodes' disks")
        self._remote = ray.remote(ReplicaHost)
        self._adopt()
        self.reconcile()
        self._thread = threading.Thread(target=self._monitor, name="swell-ray-supervisor", daemon=True)
        self._thread.start()

    def release(self, timeout: float = 60) -> None:
        """Stop supervising and leave every replica running: they are detached actors, so a gateway
        that restarts (its pod replaced) keeps the fleet, and the next `start` in the namespace adopts
        them. What was draining finishes its drain; the next supervisor reaps it."""
        self._halt()
        with self._lock:
            self._slots, self._retired = [], []

    def down(self, timeout: float = 60) -> None:
        """`swell down`: adopt whatever replicas the namespace holds, start none, and `stop` them."""
        connect(self.address, self.config.cluster.namespace, self._environ)
        self._remote = ray.remote(ReplicaHost)
        self._adopt()
        self.stop(timeout)

    def stop(self, timeout: float = 60) -> None:
        """Drain every replica; kill the actors of those still running after `timeout` seconds."""
        self._halt()
        with self._lock:
            slots = [slot for slot in self._slots + self._retired if slot.actor is not None]
            self._retired, self._slots = slots, []
        for slot in slots:
            slot.draining = True
            _call(slot.actor.drain)
        deadline = time.monotonic() + timeout
        while slots and time.monotonic() < deadline:
            slots = [slot for slot in slots if not self._finished(slot, wait=0.5)]
        with self._lock:
            for slot in self._retired:
                self._kill(slot)
            self._retired = []

    def scale(self, service: str, replicas: int, *, models: Sequence[str] | None = None) -> None:
        spec = find_service(self._services, service)
        with self._lock:
            self._desired[service] = clamp(spec, replicas)
            if models is not None:
                self._models[service] = tuple(models)
        if self._remote is not None:
            self.reconcile()

    def warm(self, service: str, models: Sequence[str]) -> None:
        """Logged and recorded only (`statistics().extra["warm_wanted"]`): fetching ahead on every
        node needs a task pinned to each node with the datasets' secrets, which is not built yet. A
        node is warmed by its init step (`swell data preload`, a `swell_warm_<dataset>` resource) or
        by the replicas it runs."""
        spec = find_service(self._services, service)
        with self._lock:
            self._warm_wanted[service] = tuple(models)
        log.info(
            "warm %s: %s wanted; not fetched ahead on Ray (nodes warm as they run)", spec.name, list(models)
        )

    def desired(self, service: str) -> int:
        return self._desired[find_service(self._services, service).name]

    def replicas(self) -> list[ReplicaInfo]:
        with self._lock:
            return [self._info(slot) for slot in self._slots + self._retired]

    def sizing(self) -> dict[str, dict[str, Any]]:
        """Right-sizing advice per service from its replicas' usage (dry run: never applied)."""
        resources = {name: service.resources for name, service in self._services.items()}
        with self._lock:
            return self._usage.advice(resources, self.clock.now())

    def statistics(self) -> ClusterStats:
        replicas = self.replicas()
        with self._lock:
            pending = sum(1 for slot in self._slots if slot.actor is not None and slot.node is None)
            waiting = sum(1 for slot in self._slots if slot.wait is not None)
            warm = {node: sorted(models) for node, models in self._node_warm.items()}
            return ClusterStats(
                kind=self.kind,
                desired=dict(self._desired),
                states=count_states(replicas),
                restarts=sum(r.restarts for r in replicas),
                started=self._started,
                started_warm=self._started_warm,
                nodes=self._nodes,
                pending=pending + waiting,
                extra={
                    "warm_nodes": warm,
                    "warm_wanted": {name: list(models) for name, models in self._warm_wanted.items()},
                    "gpu_measured": {k: v.footprint_bytes for k, v in self._measured.items()},
                },
            )

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _adopt(self) -> None:
        """Take over the replicas a previous supervisor left in the namespace (`release`): one of an
        unchanged service on the same queue and result store becomes a slot again; the others (a
        changed or removed service, another queue, one that was draining) are drained and reaped. An
        actor that does not answer within `ADOPT_SECONDS` (still waiting for a node) is killed."""
        handles = _named_actors(self.config.cluster.namespace)
        answers = {name: handle.identity.remote() for name, handle in handles.items()}
        ready, _ = ray.wait(list(answers.values()), num_returns=len(answers), timeout=ADOPT_SECONDS)
        mine = fingerprint(self.queue_url, self.config.cluster.results_url)
        with self._lock:
            for name, ref in answers.items():
                who = _answer(ref) if ref in ready else None
                if who is None:
                    _forget(handles[name])
                    continue
                self._adopt_one(name, handles[name], who, mine)

    def _adopt_one(self, name: str, handle: Any, who: dict[str, Any], mine: str) -> None:
        service = self._services.get(ServiceConfig.model_validate_json(who["service"]).name)
        slot = RaySlot(
            id=who["replica_id"], service=service or ServiceConfig.model_validate_json(who["service"])
        )
        slot.actor, slot.restarts, slot.counted, slot.adopted = handle, _restarts_in(name), True, True
        slot.started_at = self.clock.now() - max(0.0, time.time() - float(who["started"]))
        same = service is not None and service.model_dump_json() == who["service"]
        if same and who["fingerprint"] == mine and not who["draining"]:
            self._slots.append(slot)
            return
        log.info("replica %s left by a previous supervisor serves another config: draining it", slot.id)
        slot.draining = True
        self._retired.append(slot)
        _call(handle.drain)

    # -- the reconcile pass -------------------------------------------------------------------

    def reconcile(self) -> None:
        """One pass: read the nodes, poll every actor, restart what died, scale up or down."""
        with self._lock:
            nodes = self._read_nodes()
            now = self.clock.now()
            for slot in list(self._slots):
                self._check(slot, now, nodes)
            self._retired = [slot for slot in self._retired if not self._finished(slot)]
            for name, want in self._desired.items():
                self._resize(name, want, nodes, now)

    def _monitor(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.reconcile()
            except Exception:  # the loop must outlive a bad pass (a GCS hiccup)
                log.exception("a reconcile pass failed; the next one tries again")

    def _read_nodes(self) -> list[placement.Node]:
        alive = [node for node in ray.nodes() if node.get("Alive")]
        available = _available_per_node()
        self._nodes = len(alive)
        result = []
        for node in alive:
            node_id = node["NodeID"]
            warm = placement.warm_from_resources(node.get("Resources", {})) | self._node_warm.get(
                node_id, set()
            )
            result.append(placement.Node(node_id, available.get(node_id, {}), frozenset(warm)))
        return result

    def _check(self, slot: RaySlot, now: float, nodes: list[placement.Node]) -> None:
        if slot.actor is not None:
            self._poll(slot, now)
        if slot.actor is not None and slot.returncode is None and not self._hung(slot, now):
            return
        if slot.actor is not None:
            self._ended(slot, now)
        if now >= slot.next_start:
            self._spawn(slot, nodes, now)

    def _poll(self, slot: RaySlot, now: float) -> None:
        """Take the answer of the outstanding status() call, if it came, and ask again."""
        if slot.poll is None:
            slot.poll = slot.actor.status.remote()
            return
        ready, _ = ray.wait([slot.poll], timeout=0)
        if not ready:
            return
        try:
            answer = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            slot.returncode, slot.last_error = -1, _actor_error(exc)
            return
        finally:
            slot.poll = None
        self._observe(slot, answer, now)
        slot.poll = slot.actor.status.remote()

    def _observe(self, slot: RaySlot, answer: dict[str, Any], now: float) -> None:
        slot.last_seen, slot.node, slot.pid = now, answer["node"], answer["pid"]
        slot.returncode = answer["returncode"]
        self._node_warm.setdefault(slot.node, set()).update(answer["warm"])
        if answer["status"] is not None:
            slot.status = WorkerStatus.from_dict(answer["status"])
            slot.beat_age = max(0.0, answer["now"] - slot.status.heartbeat)  # both on the node's clock
            if slot.status.gpu is not None:
                self._measured[slot.service.name] = slot.status.gpu
            record_usage(self._usage, slot.service.name, slot.id, slot.status, now)
        if not slot.counted:
            slot.counted = True
            self._started += 1
            self._started_warm += int(bool(slot.warm))
        if slot.status is not None and slot.status.serving:
            slot.ready, slot.crash_streak, slot.backoff = True, 0, BACKOFF_MIN

    def _hung(self, slot: RaySlot, now: float) -> bool:
        """A placed replica whose worker's heartbeat (or whose actor's answer) is too old."""
        if slot.node is None or slot.status is None:
            return False  # not placed yet, or still starting: waiting for room is not hanging
        return now - (slot.last_seen or now) > self.hang_seconds or slot.beat_age > self.hang_seconds

    def _ended(self, slot: RaySlot, now: float) -> None:
        """Record why the slot's actor or worker ended, free it, and schedule the next start."""
        hung = slot.returncode is None
        self._keep_counts(slot)
        if not (slot.ready or (slot.status is not None and slot.status.became_ready)):
            slot.crash_streak += 1
        if hung:
            slot.last_error = exit_reason(None, None, self.hang_seconds)
        elif slot.returncode != -1 or slot.last_error is None:
            slot.last_error = exit_reason(slot.status, slot.returncode, None)
        self._kill(slot)
        slot.restarts += 1
        slot.next_start = now + slot.backoff
        slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)

    def _resize(self, name: str, want: int, nodes: list[placement.Node], now: float) -> None:
        mine = [slot for slot in self._slots if slot.service.name == name]
        for _ in range(want - len(mine)):
            slot = RaySlot(id=f"{name}-{uuid.uuid4().hex[:8]}", service=self._services[name])
            self._slots.append(slot)
            self._spawn(slot, nodes, now)
        for slot in sorted(mine, key=_drain_order)[: max(0, len(mine) - want)]:
            self._slots.remove(slot)
            slot.draining = True
            if slot.actor is None:
                continue
            self._retired.append(slot)
            _call(slot.actor.drain)

    def _spawn(self, slot: RaySlot, nodes: list[placement.Node], now: float) -> None:
        """Place a new actor for `slot` (or note why it waits) and start its worker."""
        service = slot.service
        held = [
            other.model for other in self._slots if other.service.name == service.name and other is not slot
        ]
        slot.model = next_model(service, self._models.get(service.name, ()), held)
        nodes = [_as_models(node, service, slot.model) for node in nodes]
        request = placement.request_for(service.resources, gpus=self._gpus(service))
        where = placement.place(request, slot.model, nodes, service.resources.warm_cache)
        slot.wait = where.wait
        if where.wait is not None:
            return
        slot.warm_nodes = frozenset(node.id for node in nodes if slot.model and slot.model in node.warm)
        slot.placed_warm = where.warm
        name = f"{slot.id}-{slot.restarts}"  # a new name per start: the old actor may not be gone yet
        options = _actor_options(name, request, where, self.config.cluster.namespace)
        args = replace(self._worker_args(slot, request), queue_url="")  # the URL travels in `private`
        private = [ray.put(self._private(service))]  # nested: the task spec holds only the ref
        slot.actor = self._remote.options(**options).remote(args, service.pass_env, private)
        slot.poll, slot.node, slot.pid, slot.status, slot.returncode = None, None, None, None, None
        slot.started_at, slot.last_seen, slot.ready, slot.counted, slot.beat_age = (
            now,
            None,
            False,
            False,
            0.0,
        )

    def _gpus(self, service: ServiceConfig) -> float:
        return gpu.gpu_request(service.resources.gpus, self._measured.get(service.name))

    def _worker_args(self, slot: RaySlot, request: placement.Request) -> WorkerArgs:
        """The worker's arguments; its grace period is this process's `SWELL_DRAIN_SECONDS` unless
        the backend was given one (a Kubernetes pod sets it a little under its grace period)."""
        return WorkerArgs(
            service=slot.service,
            replica_id=slot.id,
            data_dir=self.data_dir,
            queue_url=self.queue_url,
            gpu_fraction=request.gpus if 0 < request.gpus < 1 else None,
            models=preload(slot.service, slot.model),
            drain_seconds=drain_seconds_from() if self.drain_seconds is None else self.drain_seconds,
        )

    def _datasets(self, service: ServiceConfig) -> dict[str, DatasetConfig]:
        return service_datasets(self.config, service)

    def _worker_env(self) -> dict[str, str]:
        url = self.config.cluster.results_url
        return {RESULTS_ENV: url} if url else {}

    def _private(self, service: ServiceConfig) -> Private:
        """What a replica's host gets through the object store rather than its task spec."""
        datasets = {name: spec.model_dump(mode="json") for name, spec in self._datasets(service).items()}
        return {"queue_url": self.queue_url, "datasets": datasets, "env": self._worker_env()}

    def _finished(self, slot: RaySlot, wait: float = 0.0) -> bool:
        """For a draining slot: whether its worker has exited (then its actor is killed)."""
        if slot.actor is None:
            return True
        try:
            answer = ray.get(slot.actor.status.remote(), timeout=max(wait, 0.1))
        except ray.exceptions.GetTimeoutError:
            return False
        except ray.exceptions.RayError:
            answer = None
        if answer is not None and answer["returncode"] is None:
            if answer["status"] is not None:
                slot.status = WorkerStatus.from_dict(answer["status"])
            return False
        if answer is not None and answer["status"] is not None:
            slot.status = WorkerStatus.from_dict(answer["status"])
        self._keep_counts(slot)
        self._kill(slot)
        return True

    def _keep_counts(self, slot: RaySlot) -> None:
        if slot.status is not None:
            slot.jobs["done"] += slot.status.jobs_done
            slot.jobs["failed"] += slot.status.jobs_failed
            slot.drained = drained_dict(slot.status) or slot.drained
            slot.status = slot.status.evolve(jobs_done=0, jobs_failed=0)

    def _kill(self, slot: RaySlot) -> None:
        if slot.actor is not None:
            _call(slot.actor.kill)
            with contextlib.suppress(Exception):
                ray.kill(slot.actor, no_restart=True)
        slot.actor, slot.poll = None, None

    def _info(self, slot: RaySlot) -> ReplicaInfo:
        alive = slot.actor is not None and slot.returncode is None
        status = slot.status if alive and slot.status is not None else WorkerStatus()
        state = replica_state(status) if alive else ReplicaState.DEAD
        if slot.wait is not None and slot.actor is None:
            state = ReplicaState.STARTING
        if slot.draining:
            state = ReplicaState.DRAINING if alive else ReplicaState.STOPPED
        return ReplicaInfo(
            id=slot.id,
            service=slot.service.name,
            state=state,
            pid=slot.pid,
            model=status.model or slot.model,
            models=status.models,
            jobs_done=slot.jobs["done"] + status.jobs_done,
            jobs_failed=slot.jobs["failed"] + status.jobs_failed,
            restarts=slot.restarts,
            started_at=slot.started_at,
            last_heartbeat=status.heartbeat or None,
            phases=dict(status.phases),
            last_error=one_line(status.error) if status.error else (slot.wait or slot.last_error),
            crash_streak=0 if state in (ReplicaState.READY, ReplicaState.BUSY) else slot.crash_streak,
            node=slot.node,
            warm=slot.warm if slot.node is not None else None,
            drained=drained_dict(status) or slot.drained,
        )

    def __repr__(self) -> str:
        return f"RayCluster(address={self.address!r}, desired={self._desired}, replicas={len(self._slots)})"


# -- helpers ------------------------------------------------------------------------------------


def require_shared_queue(queue_url: str) -> None:
    """Refuse a queue that the cluster's nodes cannot all reach (a SQLite file, memory)."""
    scheme = queue_url.split("://", 1)[0]
    if scheme not in SHARED_SCHEMES:
        raise ConfigError(
            f"a ray cluster needs a queue every node reaches (redis://host:port/db), not {scheme}://: "
            "a SQLite file lives on one machine's disk; set SWELL_QUEUE_URL to a Redis URL",
            key="cluster.kind",
        )


def configure_auth(environ: MutableMapping[str, str]) -> str:
    """Make Ray's authentication mode explicit (see the module docstring); the mode in force."""
    mode = environ.setdefault("RAY_AUTH_MODE", "token").lower()
    if mode not in AUTH_MODES:
        raise ConfigError(
            f"RAY_AUTH_MODE={mode!r}: use one of {', '.join(AUTH_MODES)}", key="cluster.address"
        )
    if mode == "token" and not _token_available(environ):
        raise ConfigError(
            "Ray token authentication is on (RAY_AUTH_MODE=token) but no token was given: set "
            "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (`ray get-auth-token` on the head prints it), "
            "or RAY_AUTH_MODE=disabled for a cluster without authentication",
            key="cluster.address",
        )
    return mode


def refresh_auth() -> None:
    """Make Ray re-read RAY_AUTH_MODE and the token: it caches both when first imported, which may
    be before `configure_auth` set them (what Ray's own `_enable_token_auth` does)."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _token_available(environ: Mapping[str, str]) -> bool:
    if environ.get("RAY_AUTH_TOKEN"):
        return True
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).is_file() if path else (Path.home() / ".ray" / "auth_token").is_file()


def connect(address: str, namespace: str, environ: MutableMapping[str, str]) -> None:
    """Connect this process to the Ray cluster at `address` (once; a connected process is kept)."""
    configure_auth(environ)
    if ray.is_initialized():
        return
    refresh_auth()
    ray.init(address=address, namespace=namespace, log_to_driver=False, configure_logging=False)


def _available_per_node() -> dict[str, dict[str, float]]:
    """Free resources per live node (Ray's state API: it may lag a moment behind placements)."""
    from ray._private import state

    return dict(state.available_resources_per_node())


def _actor_options(
    name: str, request: placement.Request, where: placement.Placement, namespace: str
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": f"swell-{name}",
        "namespace": namespace,
        "num_cpus": request.cpus,
        "num_gpus": request.gpus,
        "resources": dict(request.custom),
        "max_restarts": 0,  # the supervisor restarts, with back-off and a reason
        "lifetime": "detached",  # outlives the gateway that started it; the next one adopts it
        "max_concurrency": 4,  # status() answers while drain() or kill() runs
    }
    if request.memory:
        options["memory"] = request.memory
    if where.node is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            where.node, soft=where.soft, _spill_on_unavailable=where.soft
        )
    return options


def _as_models(node: placement.Node, service: ServiceConfig, model: str | None) -> placement.Node:
    """`node` with its warm set in the terms of `model`: a node advertises datasets, and a model (a
    checkpoint of `models`, or the service's dataset) is warm where every dataset it needs is."""
    if model is None:
        return node
    needs = set(model_datasets(service, model))
    return replace(node, warm=frozenset({model}) if needs and needs <= node.warm else frozenset())


def _named_actors(namespace: str) -> dict[str, Any]:
    """The live replica actors in `namespace`, by name (those a previous supervisor left)."""
    handles = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"] if isinstance(entry, dict) else str(entry)
        if (isinstance(entry, dict) and entry.get("namespace") != namespace) or not name.startswith("swell-"):
            continue
        with contextlib.suppress(ValueError):  # gone meanwhile
            handles[name] = ray.get_actor(name, namespace=namespace)
    return handles


def _answer(ref: Any) -> dict[str, Any] | None:
    try:
        answer = ray.get(ref, timeout=0)
    except Exception:  # an actor that died, or one from an older version without identity()
        return None
    return answer if isinstance(answer, dict) else None


def _forget(handle: Any) -> None:
    """Kill an actor that cannot be adopted (its worker process, if any, is SIGKILLed with it)."""
    _call(handle.kill)
    with contextlib.suppress(Exception):
        ray.kill(handle, no_restart=True)


def _restarts_in(name: str) -> int:
    """The restart count an actor's name ends with (`swell-<replica id>-<restarts>`)."""
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _call(method: Any) -> None:
    """Fire a method on an actor that may be gone already."""
    with contextlib.suppress(Exception):
        method.remote()


def _actor_error(exc: BaseException) -> str:
    text = one_line(exc)
    if "node" in text.lower() and ("died" in text.lower() or "dead" in text.lower()):
        return "its node died (the actor was lost with it)"
    return f"its actor died ({text[:300]})"


def _drain_order(slot: RaySlot) -> tuple[bool, bool, float]:
    """Scale down what is not placed first, then idle before busy, newest first."""
    busy = slot.status is not None and slot.status.state.value == "busy"
    return (slot.actor is not None, busy, -(slot.started_at or 0.0))
