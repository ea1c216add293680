"""What a policy sees and what it returns: plain frozen values, built by the simulator or the live loop.

A policy never reads a clock or a queue: everything it may use, the time included, is in `Context`.
Work is measured in estimated GPU-seconds (image jobs: steps x images at a learned rate; LLM
requests: tokens at prefill and decode rates), not in request counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ModelLoad:
    """One checkpoint's share of the load at a tick."""

    queued: int = 0
    queued_work: float = 0.0  # estimated GPU-seconds waiting
    running: int = 0
    replicas: int = 0  # replicas holding it or loading it
    arrived_work: float = 0.0  # estimated GPU-seconds that arrived since the previous tick


@dataclass(frozen=True, slots=True)
class Arrival:
    """A future arrival; only the clairvoyant reference policy is given these."""

    at: float
    work: float
    model: str = ""


@dataclass(frozen=True, slots=True)
class Context:
    now: float
    tick_seconds: float
    start_seconds: float  # time from asking for a replica to it serving (GPU start + first load)
    slo_wait: float
    arrived: int = 0  # jobs that arrived since the previous tick
    arrived_work: float = 0.0
    queued: int = 0
    queued_work: float = 0.0
    running: int = 0
    running_until: tuple[float, ...] = ()  # expected end of each running job
    replicas: int = 0  # acquired and not draining: starting, loading, ready or busy
    ready: int = 0  # ready or busy
    models: Mapping[str, ModelLoad] = field(default_factory=dict)
    slots: int = 1  # jobs one replica runs at once (LLM batching)
    attainment: float | None = None  # share of recent jobs within the SLO; None when none finished
    future: tuple[Arrival, ...] = ()  # clairvoyant only

    @property
    def in_system(self) -> int:
        return self.queued + self.running

    def replicas_for(self, jobs: float) -> int:
        """Replicas that run `jobs` jobs (or GPU-seconds per second of work) at once."""
        return max(0, math.ceil(jobs / self.slots - 1e-9))


@dataclass(frozen=True, slots=True)
class Plan:
    """A decision: how many replicas, which checkpoints they hold, which ones nodes keep warm, and
    what fraction of a GPU each replica takes (`gpu_share`: 1/3 packs three replicas to a GPU)."""

    replicas: int
    reason: str = ""
    models: Mapping[str, int] = field(default_factory=dict)  # desired replicas per checkpoint
    warm: tuple[str, ...] = ()  # checkpoints every node keeps in host memory
    gpu_share: float = 1.0  # fractional replicas: the GPU fraction of each (shared GPUs)

    @property
    def gpus(self) -> int:
        """GPUs the replicas need when packed as tightly as `gpu_share` allows."""
        return math.ceil(self.replicas * self.gpu_share - 1e-9)

    def with_replicas(self, replicas: int, reason: str) -> Plan:
        """The same plan at another replica count; a placement that no longer fits is trimmed."""
        return Plan(replicas, reason, _fit(self.models, replicas), self.warm, self.gpu_share)


def _fit(models: Mapping[str, int], n: int) -> Mapping[str, int]:
    """Take replicas from the checkpoints holding the most until at most `n` are placed, so the
    checkpoints that keep one keep being served as long as possible."""
    extra = sum(models.values()) - max(0, n)
    if extra <= 0:
        return models
    out = dict(models)
    for _ in range(extra):
        top = min(out, key=lambda m: (-out[m], models[m], m))  # ties: the least wanted first
        out[top] -= 1
        if out[top] == 0:
            del out[top]
    return out


class Policy(Protocol):
    """A pure decision: no clock, no I/O. `state` is whatever frozen value `initial()` returned."""

    @property
    def name(self) -> str: ...

    def initial(self) -> Any: ...

    def decide(self, ctx: Context, state: Any) -> tuple[Plan, Any]: ...
