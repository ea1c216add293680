"""What one simulated run measured: one frozen value, printed as a table row or one JSON line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Series:
    """Per-tick samples for plots: jobs in the system, ready and acquired replicas."""

    t: np.ndarray
    demand: np.ndarray
    ready: np.ndarray
    replicas: np.ndarray
    arrival: np.ndarray  # per job
    wait: np.ndarray  # per job


@dataclass(frozen=True)
class Report:
    policy: str
    knob: str
    trace: str
    jobs: int
    slo_wait_s: float
    slo_attainment: float
    p50_wait_s: float
    p99_wait_s: float
    max_wait_s: float
    gpu_hours: float
    work_gpu_hours: float
    starting_gpu_hours: float
    loading_gpu_hours: float
    idle_gpu_hours: float
    model_loads: dict[str, int]
    scale_actions: int
    peak_gpus: int
    demand_over_ready_s: float
    sim_seconds: float
    series: Series | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body.pop("series")
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in body.items()}


def summarize_waits(waits: np.ndarray, slo: float) -> tuple[float, float, float, float]:
    """(attainment, p50, p99, max) of queue waits."""
    if len(waits) == 0:
        return 1.0, 0.0, 0.0, 0.0
    p50, p99 = np.percentile(waits, [50, 99])
    return float(np.mean(waits <= slo + 1e-9)), float(p50), float(p99), float(waits.max())
