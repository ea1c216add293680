"""Kubernetes manifests for Swell on a KubeRay cluster, from swell.yaml: pure functions, no cluster.

    namespace.yaml   Namespace
    config.yaml      ConfigMap `<name>-config` holding the swell.yaml the pods run
    secrets.yaml     Secret `<name>-secrets` (API key, webhook secret, queue URL, Ray token) and,
                     with the in-cluster Redis, Secret `<name>-redis` (its redis.conf); file mode 0600
    redis.yaml       StatefulSet + Service + NetworkPolicy `<name>-redis` (absent with an external URL)
    gateway.yaml     ServiceAccount, Deployment and Service `<name>-gateway` (`swell up`, probes on
                     /healthz and /readyz)
    raycluster.yaml  RayCluster `<name>` (ray.io/v1): a head that takes no replicas, one worker group
                     per (GPU kind, spot) the services use

The gateway runs `swell up` with `cluster: {kind: ray, address: ray://<name>-head-svc...:10001}`;
its brain scales replicas as Ray actors, and KubeRay's autoscaler adds or removes worker pods to
fit them, within each group's `minReplicas..maxReplicas` (the pods that the services' replica
bounds need). One gateway replica: it holds the brain and the cluster's supervisor, and two would
fight over the same actors (`Recreate`, never two at once).

Worker groups. Each service goes to exactly one group, named after its `gpu_kind` (`gpu` when it
needs GPUs of no named kind, `cpu` when it needs none), with `-spot` for services with `spot: true`.
Every group advertises the Ray resource `swell_group_<group>` and every service in the generated
swell.yaml asks for a token of it, so the autoscaler scales the group a pending replica belongs to
and Ray never places a replica on another group's pod (a non-Spot service never lands on a Spot
node). A group of a GPU kind also advertises `swell_gpu_<kind>` (what swell.cluster.ray asks for)
and selects nodes by `node_label=<kind>` (configurable, e.g. `nvidia.com/gpu.product=NVIDIA-A10G`).
A pod has `gpus_per_node` GPUs (default: enough for the largest replica); replicas are packed onto
its GPUs first-fit by their GPU share, and the pod asks Kubernetes for the ceiling of the shares it
packs (`nvidia.com/gpu`, and the same as Ray's `num-gpus`). Spot groups tolerate the Spot taints of
GKE and AKS and `swell.dev/spot` and prefer Spot nodes; other groups require non-Spot nodes.

Warm nodes. An init container per dataset runs `swell data preload NAME` into the node-local cache
volume (emptyDir by default, or a hostPath that outlives the pod), and the group then advertises
`swell_warm_<dataset>`, which swell.cluster.ray reads as "this node holds it warm".

Drain. A worker pod's preStop hook runs `python -m swell.deploy.drain`: Ray stops placing actors on
the node, every worker gets SIGTERM and finishes or hands back what it holds within `drain_seconds`;
`terminationGracePeriodSeconds` leaves room for that and for Ray to stop.

Secrets are never put in the ConfigMap: a dataset with credentials in swell.yaml is refused (give
them as AWS_* variables in the optional Secret `<name>-data`, which every Ray pod reads).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import yaml

from swell import __version__
from swell.core.config import GATEWAY_SECRETS, ServiceConfig, SwellConfig, parse_config
from swell.core.errors import ConfigError

Manifest = dict[str, Any]

DATA_DIR = "/data"  # the gateway's data dir, and the node cache's path on every Ray pod
CONFIG_DIR = "/etc/swell"
CONFIG_FILE = "swell.yaml"
GATEWAY_PORT = 8000
RAY_CLIENT_PORT = 10001
RAY_GCS_PORT = 6379
REDIS_PORT = 6379
REDIS_IMAGE = "redis:7.4.2-alpine"
REDIS_UID = 999  # the redis user of the official image
RAY_UID, RAY_GID = 1000, 100  # the user of rayproject/ray images, and of the Swell image (docs)
RAY_VERSION = "2.60.0"  # the Ray in the image; must match the installed `ray` (the ray extra)
SPOT_TAINTS = (
    ("cloud.google.com/gke-spot", "true"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
    ("swell.dev/spot", "true"),
)
SPOT_LABELS = (  # a node that carries one of these is a Spot (preemptible) node
    ("cloud.google.com/gke-spot", "true"),
    ("karpenter.sh/capacity-type", "spot"),
    ("eks.amazonaws.com/capacityType", "SPOT"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
)
GROUP_PREFIX = "swell_group_"  # a worker group advertises swell_group_<group>
GPU_KIND_PREFIX = "swell_gpu_"  # swell.cluster.placement.GPU_KIND_PREFIX
WARM_PREFIX = "swell_warm_"  # swell.cluster.placement.WARM_PREFIX
TOKEN = 0.001  # the share of a group's resource one replica asks for (presence, not capacity)
ADVERTISED = 1000  # how much of a presence resource a pod advertises (a million replicas' tokens)
DEFAULT_REPLICA_MEMORY = {"gpu": 8 * 2**30, "cpu": 2 * 2**30}  # pod sizing when memory is unset
OBJECT_STORE_BYTES = 2**30  # Ray's shared memory per pod: replicas pass statuses, not tensors
RAY_OVERHEAD_BYTES = 2 * 2**30  # raylet, dashboard agent, the actors' own processes
RAY_OVERHEAD_CPUS = 1
DRAIN_MARGIN_SECONDS = 15  # preStop's Ray step, Ray's own stop, the kubelet's lag
QUOTA_SHARE = 0.9  # the cache's quota as a share of its volume: evict before the kubelet evicts us
CREDENTIAL_FIELDS = ("access_key_id", "secret_access_key", "session_token")
QUANTITY = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>[KMGT]i?)?$")
UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
UNITS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


@dataclass(frozen=True, slots=True)
class DeployOptions:
    """How the manifests are shaped beyond swell.yaml (the `swell deploy kubernetes` flags)."""

    name: str = "swell"
    namespace: str = "swell"
    image: str = f"swell:{__version__}"
    redis_url: str | None = None  # an external Redis: no Redis objects are written
    ray_version: str = RAY_VERSION
    node_label: str = "swell.dev/gpu-kind"
    kind_values: Mapping[str, str] = field(default_factory=dict)  # gpu_kind -> node_label's value
    gpus_per_node: Mapping[str, int] = field(default_factory=dict)  # gpu_kind (or "gpu") -> GPUs
    cpus_per_node: float = 8.0  # a CPU-only group's pod (or the largest replica's, when more)
    cache_volume: Literal["emptydir", "hostpath"] = "emptydir"
    cache_host_path: str = "/var/lib/swell"
    cache_size: str = "100Gi"
    drain_seconds: float = 25.0  # swell.worker.contract.DEFAULT_DRAIN_SECONDS
    redis_storage: str = "10Gi"
    storage_class: str | None = None
    gateway_cpu: str = "1"
    gateway_memory: str = "1Gi"
    head_cpu: str = "2"
    head_memory: str = "4Gi"


@dataclass(frozen=True, slots=True)
class Secrets:
    """The values of the Secrets; generated when not given, kept across runs (see `read_secrets`)."""

    api_key: str
    webhook_secret: str
    ray_token: str
    redis_password: str

    @classmethod
    def generate(cls, **given: str | None) -> Secrets:
        values = {name: given.get(name) or secrets.token_urlsafe(32) for name in cls.__slots__}
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Pod:
    """One worker pod's share of a packing: the GPU share held on each of its GPUs, and the rest."""

    gpus: tuple[float, ...]
    cpus: float = 0.0
    memory: int = 0
    custom: Mapping[str, float] = field(default_factory=dict)

    @property
    def gpus_used(self) -> int:
        return sum(1 for used in self.gpus if used > 0)


@dataclass(frozen=True, slots=True)
class Group:
    """A KubeRay worker group: the services it hosts and the shape and bounds of its pods."""

    name: str
    kind: str | None  # the services' gpu_kind
    spot: bool
    services: tuple[ServiceConfig, ...]
    gpus: int  # nvidia.com/gpu per pod (0 for a CPU-only group)
    cpus: int  # Ray's num-cpus per pod (KubeRay's autoscaler reads whole numbers)
    memory: int  # Ray's memory per pod (bytes)
    custom: Mapping[str, int]  # custom Ray resources per pod (whole: the autoscaler insists)
    min_pods: int
    max_pods: int
    datasets: tuple[str, ...]  # preloaded by the init containers, advertised warm


# -- the whole set of files ---------------------------------------------------------------------


def render(config: SwellConfig, options: DeployOptions, values: Secrets) -> dict[str, str]:
    """File name -> YAML text (several documents, `---` between): the same inputs, the same bytes."""
    return {name: dump(objects) for name, objects in manifests(config, options, values).items()}


def manifests(config: SwellConfig, options: DeployOptions, values: Secrets) -> dict[str, list[Manifest]]:
    """File name -> the Kubernetes objects it holds (see the module docstring)."""
    check_deployable(config, options)
    groups = plan_groups(config, options)
    text = cluster_config_text(config, options)
    files = {
        "namespace.yaml": [namespace(options)],
        "config.yaml": [config_map(options, text)],
        "secrets.yaml": secret_objects(options, values),
        "redis.yaml": [] if options.redis_url else redis_objects(options),
        "gateway.yaml": gateway_objects(options, _digest(text)),
        "raycluster.yaml": [ray_cluster(config, options, groups)],
    }
    return {name: objects for name, objects in files.items() if objects}


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people and `kubectl`: no anchors or aliases, multi-line strings as blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def dump(objects: Sequence[Manifest]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def warnings(config: SwellConfig) -> list[str]:
    """What will run but may not do what is meant (printed by the command, not refused)."""
    found = []
    if config.cluster.results_url is None:
        found.append(
            "cluster.results_url is unset: result files an engine writes stay on the worker pod's "
            "disk, where the gateway cannot serve them (set it to an s3:// bucket for image engines)"
        )
    return found


def check_deployable(config: SwellConfig, options: DeployOptions) -> None:
    """Refuse what cannot run on the cluster, naming the key."""
    if not config.services:
        raise ConfigError("no services to deploy", key="services")
    for name, dataset in config.datasets.items():
        given = [f for f in CREDENTIAL_FIELDS if getattr(dataset, f)]
        if given:
            raise ConfigError(
                f"credentials in swell.yaml would be stored in a ConfigMap; give them as AWS_* "
                f"variables in the Secret {options.name}-data instead",
                key=f"datasets.{name}.{given[0]}",
            )
    for service in config.services:
        if "path" in service.options and service.options["path"] is not None:
            raise ConfigError(
                "a local path is on no worker pod's disk: use `dataset: NAME` (a source every node "
                "fetches through its node cache)",
                key=f"services[{service.name}].options.path",
            )
    if options.redis_url and not options.redis_url.startswith(("redis://", "rediss://")):
        raise ConfigError("an external Redis URL starts with redis:// or rediss://", key="--redis-url")


# -- worker groups ------------------------------------------------------------------------------


def group_name(service: ServiceConfig) -> str:
    """The worker group a service's replicas run in (see the module docstring)."""
    resources = service.resources
    base = resources.gpu_kind or ("gpu" if resources.gpus > 0 else "cpu")
    return f"{base}-spot" if resources.spot else base


def presence_resource(group: str) -> str:
    return GROUP_PREFIX + group.replace("-", "_")


def plan_groups(config: SwellConfig, options: DeployOptions) -> list[Group]:
    """One group per distinct `group_name` of the services, in name order."""
    by_group: dict[str, list[ServiceConfig]] = {}
    for service in config.services:
        by_group.setdefault(group_name(service), []).append(service)
    return [_group(name, tuple(members), config, options) for name, members in sorted(by_group.items())]


def _group(
    name: str, services: tuple[ServiceConfig, ...], config: SwellConfig, options: DeployOptions
) -> Group:
    kind = services[0].resources.gpu_kind
    gpu = any(s.resources.gpus > 0 for s in services)
    per_node = _gpus_per_node(services, options) if gpu else 0
    full = pack(_replicas(services, "max"), per_node, options)
    least = pack(_replicas(services, "min"), per_node, options)
    custom = _pod_custom(full) | _presence(name, kind, services, config)
    return Group(
        name=name,
        kind=kind,
        spot=services[0].resources.spot,
        services=services,
        gpus=max((pod.gpus_used for pod in full), default=0),
        cpus=math.ceil(max((pod.cpus for pod in full), default=0.0) - 1e-9),
        memory=max((pod.memory for pod in full), default=0),
        custom=custom,
        min_pods=len(least),
        max_pods=max(len(full), 1),
        datasets=_group_datasets(services, config),
    )


def _gpus_per_node(services: Sequence[ServiceConfig], options: DeployOptions) -> int:
    key = services[0].resources.gpu_kind or "gpu"
    largest = max(math.ceil(s.resources.gpus) for s in services)
    given = options.gpus_per_node.get(key)
    if given is not None and given < largest:
        raise ConfigError(
            f"a replica needs {largest} GPUs but a {key} node has {given}", key=f"--gpus-per-node {key}"
        )
    return given if given is not None else max(largest, 1)


@dataclass(frozen=True, slots=True)
class Item:
    """One replica to pack: its GPU share (a fraction, or whole GPUs), CPUs, memory, custom."""

    gpus: float
    cpus: float
    memory: int
    custom: Mapping[str, float]


def _replicas(services: Iterable[ServiceConfig], bound: Literal["min", "max"]) -> list[Item]:
    items: list[Item] = []
    for service in services:
        count = service.replicas.min if bound == "min" else service.replicas.max
        items += [_item(service)] * count
    return items


def _item(service: ServiceConfig) -> Item:
    r = service.resources
    default = DEFAULT_REPLICA_MEMORY["gpu" if r.gpus > 0 else "cpu"]
    memory = (
        parse_quantity(r.memory, key=f"services[{service.name}].resources.memory") if r.memory else default
    )
    return Item(gpus=r.gpus, cpus=r.cpus, memory=memory, custom=dict(r.custom))


def pack(items: Sequence[Item], gpus_per_node: int, options: DeployOptions) -> list[Pod]:
    """First-fit decreasing: whole-GPU replicas take free GPUs of one pod, fractions share a GPU
    with room; a CPU-only group packs by CPUs into pods of `options.cpus_per_node` (or the largest
    replica's). Pure: the same items, the same pods."""
    order = sorted(items, key=lambda i: (i.gpus, i.cpus, i.memory), reverse=True)
    cpu_room = max([options.cpus_per_node, *(i.cpus for i in items)])
    pods: list[Pod] = []
    for item in order:
        for index, pod in enumerate(pods):
            placed = _place(pod, item, cpu_room if gpus_per_node == 0 else None)
            if placed is not None:
                pods[index] = placed
                break
        else:
            empty = Pod(gpus=(0.0,) * gpus_per_node)
            pods.append(_add(empty, item, _gpu_slots(empty, item)))
    return pods


def _place(pod: Pod, item: Item, cpu_room: float | None) -> Pod | None:
    if cpu_room is not None:
        return _add(pod, item, ()) if pod.cpus + item.cpus <= cpu_room + 1e-9 else None
    slots = _gpu_slots(pod, item)
    return None if slots is None else _add(pod, item, slots)


def _gpu_slots(pod: Pod, item: Item) -> tuple[int, ...] | None:
    """Which GPUs of `pod` take `item`: as many free ones as it needs whole, or the first with room."""
    if item.gpus <= 0:
        return ()
    if item.gpus >= 1:
        free = [i for i, used in enumerate(pod.gpus) if used == 0]
        return tuple(free[: int(item.gpus)]) if len(free) >= item.gpus else None
    room = [i for i, used in enumerate(pod.gpus) if used + item.gpus <= 1 + 1e-9]
    return (room[0],) if room else None


def _add(pod: Pod, item: Item, slots: tuple[int, ...] | None) -> Pod:
    share = 1.0 if item.gpus >= 1 else item.gpus
    gpus = tuple(used + share if i in (slots or ()) else used for i, used in enumerate(pod.gpus))
    custom = dict(pod.custom)
    for name, amount in item.custom.items():
        custom[name] = custom.get(name, 0.0) + amount
    return replace(pod, gpus=gpus, cpus=pod.cpus + item.cpus, memory=pod.memory + item.memory, custom=custom)


def _pod_custom(pods: Sequence[Pod]) -> dict[str, int]:
    """The user's custom resources a pod must advertise: the most any one pod of the packing holds,
    rounded up (KubeRay's autoscaler reads only whole amounts)."""
    names = sorted({name for pod in pods for name in pod.custom})
    return {name: math.ceil(max(pod.custom.get(name, 0.0) for pod in pods) - 1e-9) for name in names}


def _presence(
    name: str, kind: str | None, services: Sequence[ServiceConfig], config: SwellConfig
) -> dict[str, int]:
    advertised = {presence_resource(name): ADVERTISED}
    if kind:
        advertised[GPU_KIND_PREFIX + kind] = ADVERTISED
    for dataset in _group_datasets(services, config):
        advertised[WARM_PREFIX + dataset] = ADVERTISED
    return advertised


def service_datasets(service: ServiceConfig, config: SwellConfig) -> list[str]:
    """The datasets a service's options name: `dataset`, and any `<x>_dataset` or `<x>_datasets`."""
    names: list[str] = []
    for key, value in sorted(service.options.items()):
        if key == "dataset" or key.endswith("_dataset"):
            names += [value] if isinstance(value, str) else []
        elif key.endswith("_datasets") and isinstance(value, list):
            names += [v for v in value if isinstance(v, str)]
    return [name for name in dict.fromkeys(names) if name in config.datasets]


def _group_datasets(services: Iterable[ServiceConfig], config: SwellConfig) -> tuple[str, ...]:
    return tuple(sorted({name for s in services for name in service_datasets(s, config)}))


def parse_quantity(text: str, *, key: str) -> int:
    """A Kubernetes quantity (`16Gi`, `512M`, `1000`) in bytes."""
    match = QUANTITY.match(text)
    if match is None:
        raise ConfigError(f"{text!r} is not a quantity like 16Gi or 512M", key=key)
    return int(float(match["number"]) * UNITS[match["unit"] or ""])


# -- the swell.yaml the pods run ----------------------------------------------------------------


def head_service(options: DeployOptions) -> str:
    """The head's Service that KubeRay creates for a RayCluster named `options.name`."""
    return f"{options.name}-head-svc.{options.namespace}.svc.cluster.local"


def cluster_config(config: SwellConfig, options: DeployOptions) -> SwellConfig:
    """`config` for the cluster: `cluster.kind: ray` at the head's client port, and every service
    asking for a token of its group's resource (so it runs only on that group's pods)."""
    raw = config.model_dump(mode="json", exclude_defaults=True)
    address = f"ray://{head_service(options)}:{RAY_CLIENT_PORT}"
    raw["cluster"] = {**raw.get("cluster", {}), "kind": "ray", "address": address}
    for service in raw.get("services", []):
        resources = service.setdefault("resources", {})
        group = group_name(config.service(service["name"]))
        resources["custom"] = {**resources.get("custom", {}), presence_resource(group): TOKEN}
    return parse_config(raw, file="(generated for kubernetes)")


def cluster_config_text(config: SwellConfig, options: DeployOptions) -> str:
    deployed = cluster_config(config, options)
    raw = deployed.model_dump(mode="json", exclude_defaults=True)
    header = "# Generated by `swell deploy kubernetes` from the user's swell.yaml: edit that, not this.\n"
    return header + yaml.safe_dump(raw, sort_keys=True, default_flow_style=False, width=1000)


# -- objects ------------------------------------------------------------------------------------


def _labels(options: DeployOptions, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "swell",
        "app.kubernetes.io/instance": options.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "swell",
        "app.kubernetes.io/version": __version__,
    }


def _selector(options: DeployOptions, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": options.name, "app.kubernetes.io/component": component}


def _meta(options: DeployOptions, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": options.namespace, "labels": _labels(options, component)}


def namespace(options: DeployOptions) -> Manifest:
    labels = {
        "app.kubernetes.io/part-of": "swell",
        # every pod here passes the `restricted` Pod Security Standard, but for a hostPath cache
        "pod-security.kubernetes.io/enforce": "restricted"
        if options.cache_volume == "emptydir"
        else "privileged",
    }
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": options.namespace, "labels": labels},
    }


def config_map(options: DeployOptions, text: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(options, f"{options.name}-config", "config"),
        "data": {CONFIG_FILE: text},
    }


def queue_url(options: DeployOptions, values: Secrets) -> str:
    if options.redis_url:
        return options.redis_url
    host = f"{options.name}-redis.{options.namespace}.svc.cluster.local"
    return f"redis://:{values.redis_password}@{host}:{REDIS_PORT}/0"


def secret_objects(options: DeployOptions, values: Secrets) -> list[Manifest]:
    data = {
        "api-key": values.api_key,
        "webhook-secret": values.webhook_secret,
        "queue-url": queue_url(options, values),
        "ray-auth-token": values.ray_token,
    }
    objects = [_secret(options, f"{options.name}-secrets", "secrets", data)]
    if not options.redis_url:
        conf = f"requirepass {values.redis_password}\n{REDIS_CONF}"
        redis = _secret(options, f"{options.name}-redis", "redis", {"redis.conf": conf})
        redis["stringData"]["redis-password"] = values.redis_password
        objects.append(redis)
    return objects


REDIS_CONF = """\
dir /data
appendonly yes
appendfsync everysec
save 900 1
save 300 100
protected-mode no
maxmemory-policy noeviction
"""


def _secret(options: DeployOptions, name: str, component: str, data: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(options, name, component),
        "type": "Opaque",
        "stringData": dict(data),
    }


def read_secrets(text: str, options: DeployOptions) -> dict[str, str]:
    """The values a previous `secrets.yaml` holds, so a second run keeps the keys it generated."""
    found: dict[str, str] = {}
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict) or doc.get("kind") != "Secret":
            continue
        data = doc.get("stringData") or {}
        name = (doc.get("metadata") or {}).get("name")
        if name == f"{options.name}-secrets":
            found |= {k: data[v] for k, v in SECRET_KEYS.items() if isinstance(data.get(v), str)}
        elif name == f"{options.name}-redis" and isinstance(data.get("redis-password"), str):
            found["redis_password"] = data["redis-password"]
    return found


SECRET_KEYS = {"api_key": "api-key", "webhook_secret": "webhook-secret", "ray_token": "ray-auth-token"}


def _restricted(uid: int, *, read_only: bool) -> dict[str, Any]:
    """A container's securityContext that passes the `restricted` Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security(uid: int, gid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _secret_env(options: DeployOptions, variable: str, key: str) -> dict[str, Any]:
    ref = {"name": f"{options.name}-secrets", "key": key}
    return {"name": variable, "valueFrom": {"secretKeyRef": ref}}


def _ray_auth_env(options: DeployOptions) -> list[dict[str, Any]]:
    """Ray's token authentication, explicit on every Ray container and the gateway (the driver)."""
    return [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        _secret_env(options, "RAY_AUTH_TOKEN", "ray-auth-token"),
    ]


def _resources(cpu: str, memory: str, **extra: str) -> dict[str, Any]:
    requests = {"cpu": cpu, "memory": memory, **extra}
    limits = {"memory": memory, **{k: v for k, v in extra.items() if k != "ephemeral-storage"}}
    return {"requests": requests, "limits": limits}


def redis_objects(options: DeployOptions) -> list[Manifest]:
    name = f"{options.name}-redis"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(options, name, "redis"),
        "spec": {
            "selector": _selector(options, "redis"),
            "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis"}],
        },
    }
    return [service, _redis_statefulset(options, name), _redis_policy(options, name)]


def _redis_statefulset(options: DeployOptions, name: str) -> Manifest:
    claim: dict[str, Any] = {
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": options.redis_storage}},
        },
    }
    if options.storage_class:
        claim["spec"]["storageClassName"] = options.storage_class
    probe = {"tcpSocket": {"port": "redis"}, "periodSeconds": 10, "timeoutSeconds": 3}
    container = {
        "name": "redis",
        "image": REDIS_IMAGE,
        "args": ["/etc/redis/redis.conf"],  # the password is in the file, never in the argv
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "resources": _resources("500m", "1Gi"),
        "securityContext": _restricted(REDIS_UID, read_only=True),
        "livenessProbe": {**probe, "initialDelaySeconds": 10},
        "readinessProbe": probe,
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "conf", "mountPath": "/etc/redis", "readOnly": True},
        ],
    }
    conf = {"secretName": name, "items": [{"key": "redis.conf", "path": "redis.conf"}], "defaultMode": 0o440}
    pod = {
        "metadata": {"labels": _labels(options, "redis")},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": _pod_security(REDIS_UID, REDIS_UID),
            "terminationGracePeriodSeconds": 30,  # appendfsync everysec: at most a second unsynced
            "containers": [container],
            "volumes": [{"name": "conf", "secret": conf}],
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(options, name, "redis"),
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": _selector(options, "redis")},
            "template": pod,
            "volumeClaimTemplates": [claim],
        },
    }


def _redis_policy(options: DeployOptions, name: str) -> Manifest:
    """Only Swell's own pods (the gateway, the Ray pods) reach Redis."""
    peers = {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "swell"}}}
    ray_peers = {"podSelector": {"matchLabels": {"ray.io/cluster": options.name}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(options, name, "redis"),
        "spec": {
            "podSelector": {"matchLabels": _selector(options, "redis")},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [peers, ray_peers], "ports": [{"protocol": "TCP", "port": REDIS_PORT}]}],
        },
    }


def gateway_objects(options: DeployOptions, config_digest: str) -> list[Manifest]:
    name = f"{options.name}-gateway"
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(options, name, "gateway"),
        "automountServiceAccountToken": False,
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(options, name, "gateway"),
        "spec": {
            "selector": _selector(options, "gateway"),
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    return [account, _gateway_deployment(options, name, config_digest), service]


def _gateway_deployment(options: DeployOptions, name: str, config_digest: str) -> Manifest:
    pod = {
        "metadata": {
            "labels": _labels(options, "gateway"),
            "annotations": {"swell.dev/config-sha256": config_digest},  # a new config rolls the pod
        },
        "spec": {
            "serviceAccountName": name,
            "automountServiceAccountToken": False,
            "securityContext": _pod_security(RAY_UID, RAY_GID),
            "terminationGracePeriodSeconds": int(options.drain_seconds) + DRAIN_MARGIN_SECONDS,
            "containers": [_gateway_container(options)],
            "volumes": [
                {"name": "config", "configMap": {"name": f"{options.name}-config"}},
                {"name": "data", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(options, name, "gateway"),
        "spec": {
            "replicas": 1,  # one brain, one supervisor of the Ray actors
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": _selector(options, "gateway")},
            "template": pod,
        },
    }


def _gateway_container(options: DeployOptions) -> dict[str, Any]:
    command = ["swell", "up", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--data-dir", DATA_DIR]
    command += ["--host", "0.0.0.0", "--port", str(GATEWAY_PORT)]
    env = [
        _secret_env(options, "SWELL_QUEUE_URL", "queue-url"),
        _secret_env(options, GATEWAY_SECRETS[0], "api-key"),
        _secret_env(options, GATEWAY_SECRETS[1], "webhook-secret"),
        *_ray_auth_env(options),
        {"name": "SWELL_DRAIN_SECONDS", "value": f"{options.drain_seconds:g}"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]
    http = {"port": "http"}
    return {
        "name": "gateway",
        "image": options.image,
        "command": command,
        "env": env,
        # the data Secret's AWS_* let the gateway read result files from an s3:// results_url
        "envFrom": [{"secretRef": {"name": f"{options.name}-data", "optional": True}}],
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT}],
        "resources": _resources(options.gateway_cpu, options.gateway_memory),
        "securityContext": _restricted(RAY_UID, read_only=True),
        "startupProbe": {"httpGet": {"path": "/healthz", **http}, "periodSeconds": 2, "failureThreshold": 60},
        "livenessProbe": {"httpGet": {"path": "/healthz", **http}, "periodSeconds": 10, "timeoutSeconds": 5},
        "readinessProbe": {"httpGet": {"path": "/readyz", **http}, "periodSeconds": 5, "timeoutSeconds": 5},
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


# -- the RayCluster -----------------------------------------------------------------------------


def ray_cluster(config: SwellConfig, options: DeployOptions, groups: Sequence[Group]) -> Manifest:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": _meta(options, options.name, "ray"),
        "spec": {
            "rayVersion": options.ray_version,
            "enableInTreeAutoscaling": True,
            "autoscalerOptions": _autoscaler(options),
            "headGroupSpec": _head(options),
            "workerGroupSpecs": [_worker_group(options, group) for group in groups],
        },
    }


def _autoscaler(options: DeployOptions) -> dict[str, Any]:
    return {
        "upscalingMode": "Default",
        "idleTimeoutSeconds": 300,  # a pod with no replica for 5 minutes goes
        "env": _ray_auth_env(options),
        "resources": _resources("500m", "512Mi"),
        "securityContext": _restricted(RAY_UID, read_only=False),
    }


def _ray_volumes() -> list[dict[str, Any]]:
    return [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": _bytes(OBJECT_STORE_BYTES)}}]


def _head(options: DeployOptions) -> dict[str, Any]:
    container = {
        "name": "ray-head",
        "image": options.image,
        "env": _ray_auth_env(options),
        "ports": [
            {"name": "gcs-server", "containerPort": RAY_GCS_PORT},
            {"name": "dashboard", "containerPort": 8265},
            {"name": "client", "containerPort": RAY_CLIENT_PORT},
        ],
        "resources": _resources(options.head_cpu, options.head_memory),
        "securityContext": _restricted(RAY_UID, read_only=False),  # Ray writes its session to /tmp/ray
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
    }
    return {
        # no replica on the head: it keeps the cluster's state; losing it to a full GPU would cost all
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": {
            "metadata": {"labels": _labels(options, "ray-head")},
            "spec": {
                "automountServiceAccountToken": False,
                "securityContext": _pod_security(RAY_UID, RAY_GID),
                "containers": [container],
                "volumes": _ray_volumes(),
            },
        },
    }


def _worker_group(options: DeployOptions, group: Group) -> dict[str, Any]:
    return {
        "groupName": group.name,
        "replicas": group.min_pods,
        "minReplicas": group.min_pods,
        "maxReplicas": group.max_pods,
        "rayStartParams": _ray_start(group),
        "template": {
            "metadata": {"labels": _labels(options, "ray-worker")},
            "spec": _worker_pod(options, group),
        },
    }


def _ray_start(group: Group) -> dict[str, str]:
    params = {
        "num-cpus": str(group.cpus),
        "memory": str(group.memory),
        "object-store-memory": str(OBJECT_STORE_BYTES),
        # KubeRay hands the value to a shell, and its autoscaler drops the outer quotes: quoted once
        "resources": "'" + json.dumps(dict(sorted(group.custom.items())), separators=(",", ":")) + "'",
    }
    if group.gpus:
        params["num-gpus"] = str(group.gpus)
    return params


def grace_seconds(options: DeployOptions) -> int:
    return math.ceil(options.drain_seconds) + DRAIN_MARGIN_SECONDS


def _worker_pod(options: DeployOptions, group: Group) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(RAY_UID, RAY_GID),
        "terminationGracePeriodSeconds": grace_seconds(options),
        "initContainers": _preload_containers(options, group),
        "containers": [_worker_container(options, group)],
        "volumes": [
            *_ray_volumes(),
            _cache_volume(options),
            {"name": "config", "configMap": {"name": f"{options.name}-config"}},
        ],
        "tolerations": _tolerations(group),
        "affinity": _affinity(group),
    }
    if group.kind:
        value = options.kind_values.get(group.kind, group.kind)
        spec["nodeSelector"] = {options.node_label: value}
    return {key: value for key, value in spec.items() if value not in ([], None)}


def _worker_container(options: DeployOptions, group: Group) -> dict[str, Any]:
    drain = ["python", "-m", "swell.deploy.drain", "--timeout", f"{options.drain_seconds + 5:g}"]
    extra = {"nvidia.com/gpu": str(group.gpus)} if group.gpus else {}
    container = {
        "name": "ray-worker",
        "image": options.image,
        "env": _worker_env(options),
        "envFrom": [{"secretRef": {"name": f"{options.name}-data", "optional": True}}],
        "resources": _resources(
            f"{group.cpus + RAY_OVERHEAD_CPUS:g}",  # Ray's CPUs and the raylet's
            _bytes(group.memory + OBJECT_STORE_BYTES + RAY_OVERHEAD_BYTES),
            **{"ephemeral-storage": options.cache_size} if options.cache_volume == "emptydir" else {},
            **extra,
        ),
        "securityContext": _restricted(RAY_UID, read_only=False),
        "lifecycle": {"preStop": {"exec": {"command": drain}}},
        "volumeMounts": _cache_mounts(),
    }
    return container


def _worker_env(options: DeployOptions) -> list[dict[str, Any]]:
    quota = int(parse_quantity(options.cache_size, key="--cache-size") * QUOTA_SHARE)
    return [
        *_ray_auth_env(options),
        {"name": "SWELL_DATA_DIR", "value": DATA_DIR},
        {"name": "SWELL_CACHE_QUOTA", "value": str(quota)},
        {"name": "SWELL_DRAIN_SECONDS", "value": f"{options.drain_seconds:g}"},
        {"name": "SWELL_RAY_GCS_ADDRESS", "value": f"{head_service(options)}:{RAY_GCS_PORT}"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]


def _cache_mounts() -> list[dict[str, Any]]:
    return [
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": DATA_DIR},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
    ]


def _cache_volume(options: DeployOptions) -> dict[str, Any]:
    if options.cache_volume == "hostpath":
        return {"name": "cache", "hostPath": {"path": options.cache_host_path, "type": "DirectoryOrCreate"}}
    return {"name": "cache", "emptyDir": {"sizeLimit": options.cache_size}}


def _preload_containers(options: DeployOptions, group: Group) -> list[dict[str, Any]]:
    """A hostPath cache is made the Ray user's first (kubelet creates it root-owned); then one init
    container per dataset fetches it into the node cache, so the node starts warm."""
    first = [_cache_owner(options)] if options.cache_volume == "hostpath" else []
    return first + [_preload(options, name, index) for index, name in enumerate(group.datasets)]


def _preload(options: DeployOptions, dataset: str, index: int) -> dict[str, Any]:
    command = ["swell", "data", "preload", dataset, "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"]
    return {
        "name": _container_name(f"preload-{index}-{dataset}"),
        "image": options.image,
        "command": [*command, "--data-dir", DATA_DIR],
        "env": [e for e in _worker_env(options) if e["name"] in ("SWELL_CACHE_QUOTA", "HF_HUB_OFFLINE")],
        "envFrom": [{"secretRef": {"name": f"{options.name}-data", "optional": True}}],
        "resources": _resources("1", "2Gi"),
        "securityContext": _restricted(RAY_UID, read_only=True),
        "volumeMounts": [
            {"name": "cache", "mountPath": DATA_DIR},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        ],
    }


def _cache_owner(options: DeployOptions) -> dict[str, Any]:
    return {
        "name": "cache-owner",
        "image": options.image,
        "command": ["chown", f"{RAY_UID}:{RAY_GID}", DATA_DIR],
        "resources": _resources("100m", "64Mi"),
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
        },
        "volumeMounts": [{"name": "cache", "mountPath": DATA_DIR}],
    }


def _container_name(text: str) -> str:
    """A DNS-1123 label (lowercase, digits, '-', at most 63)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return cleaned[:63].rstrip("-")


def _tolerations(group: Group) -> list[dict[str, Any]]:
    tolerations = (
        [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}] if group.gpus else []
    )
    if group.spot:
        tolerations += [
            {"key": key, "operator": "Equal", "value": value, "effect": "NoSchedule"}
            for key, value in SPOT_TAINTS
        ]
    return tolerations


def _affinity(group: Group) -> dict[str, Any]:
    """Spot groups prefer Spot nodes; the others never land on one."""
    if group.spot:
        preferred = [
            {"weight": 100, "preference": {"matchExpressions": [{"key": k, "operator": "In", "values": [v]}]}}
            for k, v in SPOT_LABELS
        ]
        return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": preferred}}
    expressions = [{"key": k, "operator": "NotIn", "values": [v]} for k, v in SPOT_LABELS]
    required = {"nodeSelectorTerms": [{"matchExpressions": expressions}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}


def _bytes(count: int) -> str:
    """Bytes as a Kubernetes quantity, in Mi when whole (readable), else in bytes."""
    return f"{count // 2**20}Mi" if count % 2**20 == 0 else str(count)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
