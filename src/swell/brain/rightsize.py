"""Right-sizing advice (Autopilot-style): from what replicas used, what each service should ask for.

Pure: samples in, a recommendation out; no clock (`now` is an argument) and no I/O. The cluster
backends feed a `UsageWindow` with one `Sample` per replica every `Policy.sample_seconds` (from the
`usage` each worker reports, swell.cluster.usage), and `GET /v1/services` and `swell status` show
`recommend(...)` beside the service's configured `resources:`.

The rule, per service, over the samples of the moving window (`window_seconds`; each sample is one
replica at one moment, so the figures are per replica):

- requests at a high percentile (`percentile`, p90) of the window plus a `margin` (15 %): a request
  is what the scheduler reserves, so it should cover ordinary load, not the worst second;
- limits at the window's peak times `limit_factor` (1.5), never below the request: a limit is what
  kills or throttles, so it should sit well above anything seen;
- GPU memory share (for a replica on a shared GPU) from the measured footprint: the peak GPU
  memory in the window with the same headroom the worker's cap uses (swell.cluster.gpu.HEADROOM),
  rounded up to a 0.05 share; only when a replica reported GPU memory;
- never below a floor (`cpu_floor`, `memory_floor`): an idle replica's figures would starve its
  next burst; CPU is rounded up to 0.05 cores and memory to a MiB;
- too few samples (`min_samples`) give no recommendation, and say why.

Dry run first: the recommendation is advice only and is never applied in this version (its
`applied` is false and its `mode` is `dry-run`); change `resources:` in swell.yaml to take it. CPU
and memory are the worker process's own (not the child processes it may start).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from swell.cluster.gpu import HEADROOM
from swell.cluster.placement import parse_quantity
from swell.core.config import Resources

MIB = 2**20
CPU_STEP = 0.05
GPU_STEP = 0.05
MAX_SAMPLES = 20_000  # per service: a cap on the window's memory (an hour of 25 replicas at 5 s)
DRY_RUN = "advice only: never applied in this version; set resources: in swell.yaml to take it"


@dataclass(frozen=True, slots=True)
class Sample:
    """One replica's usage at one moment: CPU cores, resident bytes, GPU bytes (and the GPU's total)."""

    at: float
    replica: str
    cpu: float
    rss_bytes: int
    gpu_bytes: int | None = None
    gpu_total_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    window_seconds: float = 3600.0
    percentile: float = 0.9
    margin: float = 0.15
    limit_factor: float = 1.5
    min_samples: int = 30
    sample_seconds: float = 5.0  # one sample per replica this often, at most
    cpu_floor: float = 0.1
    memory_floor: int = 128 * MIB
    gpu_headroom: float = HEADROOM

    def __post_init__(self) -> None:
        if not 0 < self.percentile <= 1:
            raise ValueError(f"percentile must be in (0, 1], not {self.percentile}")
        if self.window_seconds <= 0 or self.min_samples < 1 or self.limit_factor < 1 or self.margin < 0:
            raise ValueError("window_seconds > 0, min_samples >= 1, limit_factor >= 1, margin >= 0")


@dataclass(frozen=True, slots=True)
class Sizes:
    """CPU cores, memory bytes and a GPU share (None: not known or not used)."""

    cpus: float | None = None
    memory_bytes: int | None = None
    gpus: float | None = None

    def to_public(self) -> dict[str, Any]:
        return {
            "cpus": self.cpus,
            "memory": quantity(self.memory_bytes),
            "memory_bytes": self.memory_bytes,
            "gpus": self.gpus,
        }


@dataclass(frozen=True, slots=True)
class Recommendation:
    service: str
    configured: Sizes
    requests: Sizes | None  # None: no recommendation yet (`reason` says why)
    limits: Sizes | None
    samples: int
    replicas: int
    window_seconds: float
    reason: str | None = None
    applied: bool = False  # never, in this version: dry run first

    def to_public(self) -> dict[str, Any]:
        return {
            "mode": "dry-run",
            "applied": self.applied,
            "note": DRY_RUN,
            "configured": self.configured.to_public(),
            "recommended": None
            if self.requests is None or self.limits is None
            else {"requests": self.requests.to_public(), "limits": self.limits.to_public()},
            "samples": self.samples,
            "replicas": self.replicas,
            "window_seconds": self.window_seconds,
            "reason": self.reason,
        }


def configured_sizes(resources: Resources) -> Sizes:
    memory = parse_quantity(resources.memory) if resources.memory else None
    return Sizes(cpus=resources.cpus, memory_bytes=memory, gpus=resources.gpus or None)


def recommend(
    service: str, resources: Resources, samples: Sequence[Sample], now: float, policy: Policy = Policy()
) -> Recommendation:
    """The advice for `service` from the `samples` of the window ending at `now` (module docstring)."""
    recent = [s for s in samples if now - policy.window_seconds <= s.at <= now]
    configured = configured_sizes(resources)
    n, replicas, window = len(recent), len({s.replica for s in recent}), policy.window_seconds
    if len(recent) < policy.min_samples:
        reason = f"{len(recent)} samples in the window; advice needs {policy.min_samples}"
        return Recommendation(service, configured, None, None, n, replicas, window, reason=reason)
    cpu = [s.cpu for s in recent]
    rss = [float(s.rss_bytes) for s in recent]
    requests = Sizes(
        cpus=_cores(max(policy.cpu_floor, percentile(cpu, policy.percentile) * (1 + policy.margin))),
        memory_bytes=_mib(max(policy.memory_floor, percentile(rss, policy.percentile) * (1 + policy.margin))),
        gpus=gpu_share(recent, policy),
    )
    limits = Sizes(
        cpus=max(requests.cpus or 0.0, _cores(max(cpu) * policy.limit_factor)),
        memory_bytes=max(requests.memory_bytes or 0, _mib(max(rss) * policy.limit_factor)),
        gpus=requests.gpus,  # a GPU share is one figure: the worker caps itself at it
    )
    return Recommendation(service, configured, requests, limits, n, replicas, window)


def gpu_share(samples: Sequence[Sample], policy: Policy) -> float | None:
    """The share of one GPU the peak measured footprint needs with headroom; None without one."""
    measured = [(s.gpu_bytes, s.gpu_total_bytes) for s in samples if s.gpu_bytes and s.gpu_total_bytes]
    if not measured:
        return None
    need = max(used * policy.gpu_headroom / total for used, total in measured)
    return min(1.0, max(GPU_STEP, math.ceil(round(need / GPU_STEP, 6)) * GPU_STEP))


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank `q` percentile (0 < q <= 1) of `values` (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def quantity(size: int | None) -> str | None:
    """Bytes as a Kubernetes-style quantity in whole MiB or GiB (what `resources.memory` takes)."""
    if size is None:
        return None
    return f"{size // 2**30}Gi" if size % 2**30 == 0 else f"{math.ceil(size / MIB)}Mi"


def _cores(value: float) -> float:
    return round(math.ceil(round(value / CPU_STEP, 6)) * CPU_STEP, 2)


def _mib(value: float) -> int:
    return math.ceil(value / MIB) * MIB


@dataclass
class UsageWindow:
    """The moving window the advice reads: samples per service, one per replica per
    `policy.sample_seconds` at most, none older than `policy.window_seconds` (no clock: `at` is the
    caller's time). Not thread-safe on its own: its owner holds its lock around it."""

    policy: Policy = field(default_factory=Policy)
    _samples: dict[str, deque[Sample]] = field(default_factory=dict)
    _last: dict[str, float] = field(default_factory=dict)  # replica -> time of its last sample

    def add(self, service: str, sample: Sample) -> bool:
        """Keep `sample` unless its replica gave one under `sample_seconds` ago; prune the window."""
        last = self._last.get(sample.replica)
        if last is not None and sample.at - last < self.policy.sample_seconds:
            return False
        self._last[sample.replica] = sample.at
        window = self._samples.setdefault(service, deque(maxlen=MAX_SAMPLES))
        window.append(sample)
        while window and window[0].at < sample.at - self.policy.window_seconds:
            window.popleft()
        return True

    def samples(self, service: str) -> list[Sample]:
        return list(self._samples.get(service, ()))

    def forget(self, replica: str) -> None:
        """A replica that is gone: its samples stay in the window, its rate limit goes."""
        self._last.pop(replica, None)

    def advice(self, resources: dict[str, Resources], now: float) -> dict[str, dict[str, Any]]:
        """Every service's recommendation, public form, by service name."""
        return {
            name: recommend(name, spec, self.samples(name), now, self.policy).to_public()
            for name, spec in resources.items()
        }

    def __repr__(self) -> str:
        counts = {name: len(samples) for name, samples in self._samples.items()}
        return f"UsageWindow(samples={counts}, policy={self.policy})"
