"""Where a replica goes on a cluster of nodes: pure functions over a snapshot, no Ray and no clock.

A replica asks for a `Request` (CPUs, GPUs, which may be a fraction, memory, custom resources) and
may hold a model. Nodes advertise which models their node cache holds warm. The rule:

- `warm_cache: off`, or no model: no preference; the cluster's scheduler packs by resources.
- `soft` (the default): the warm node with the most room that fits the request, as a soft
  preference (the scheduler may still place it elsewhere should that node fill up meanwhile); when
  no warm node has room, no preference, and the replica starts cold.
- `hard`: only a warm node; when none has room the replica waits (`Placement.wait` says why).

Among equals the node with the most free GPU (then CPU) wins, so replicas spread over warm nodes
rather than queueing on the first one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from swell.core.config import Resources
from swell.core.errors import ConfigError

WARM_PREFIX = "swell_warm_"  # a node started with resource swell_warm_<dataset> holds it warm
GPU_KIND_PREFIX = "swell_gpu_"  # a node of GPU kind K advertises swell_gpu_<K>
TOKEN = 0.001  # how much of an advertised resource a replica takes (presence, not capacity)
UNITS = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
QUANTITY = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>[KMGT]i?)?$")


@dataclass(frozen=True, slots=True)
class Request:
    """What one replica takes from its node, in Ray's terms (memory in bytes)."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory: int | None = None
    custom: Mapping[str, float] = field(default_factory=dict)

    def as_resources(self) -> dict[str, float]:
        """The request as a Ray resource dict (CPU, GPU, memory, custom), for fitting."""
        wanted = {"CPU": self.cpus, "GPU": self.gpus, **self.custom}
        if self.memory:
            wanted["memory"] = float(self.memory)
        return {name: amount for name, amount in wanted.items() if amount > 0}


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    available: Mapping[str, float]
    warm: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Placement:
    """Where to put a replica: `node` (None: anywhere), `soft` preference or hard, `warm` when the
    chosen node holds the model, `wait` (a reason) when it must not be placed yet."""

    node: str | None = None
    soft: bool = True
    warm: bool | None = None
    wait: str | None = None


def request_for(resources: Resources, *, gpus: float | None = None) -> Request:
    """A service's `resources:` as a Request; `gpus` overrides the GPU share (packing by memory)."""
    custom = dict(resources.custom)
    if resources.gpu_kind:
        custom[GPU_KIND_PREFIX + resources.gpu_kind] = TOKEN
    return Request(
        cpus=resources.cpus,
        gpus=resources.gpus if gpus is None else gpus,
        memory=parse_quantity(resources.memory) if resources.memory else None,
        custom=custom,
    )


def parse_quantity(text: str) -> int:
    """`16Gi`, `512M`, `1.5Ti`, `1000` (Kubernetes-style quantities) in bytes."""
    match = QUANTITY.match(text)
    if match is None:
        raise ConfigError(f"{text!r} is not a memory quantity like 16Gi or 512M", key="resources.memory")
    return int(float(match["number"]) * UNITS[match["unit"] or ""])


def fits(request: Request, available: Mapping[str, float]) -> bool:
    return all(available.get(name, 0.0) + 1e-9 >= amount for name, amount in request.as_resources().items())


def warm_from_resources(resources: Mapping[str, float]) -> frozenset[str]:
    """The models a node advertises warm through `swell_warm_<dataset>` resources."""
    return frozenset(name.removeprefix(WARM_PREFIX) for name in resources if name.startswith(WARM_PREFIX))


def place(
    request: Request,
    model: str | None,
    nodes: Sequence[Node],
    mode: Literal["soft", "hard", "off"] = "soft",
) -> Placement:
    """Where a replica holding `model` goes (the module docstring gives the rule)."""
    if model is None or mode == "off":
        return Placement()
    warm = [node for node in nodes if model in node.warm]
    roomy = sorted((node for node in warm if fits(request, node.available)), key=_room, reverse=True)
    if roomy:
        return Placement(node=roomy[0].id, soft=mode == "soft", warm=True)
    if mode == "hard":
        where = "has room for it" if warm else "holds it"
        return Placement(soft=False, warm=True, wait=f"no node that holds model {model!r} warm {where}")
    return Placement(warm=False)


def _room(node: Node) -> tuple[float, float]:
    return (node.available.get("GPU", 0.0), node.available.get("CPU", 0.0))
