"""Plots (matplotlib, Agg backend, imported only when a plot is asked for)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from swell.sim.report import Report
from swell.sim.sweep import frontier


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_runs(reports: Sequence[Report], path: str | Path) -> None:
    """Demand and each policy's ready capacity over time; each policy's hourly p99 queue wait."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    first = reports[0].series
    assert first is not None
    top.plot(first.t / 3600, first.demand, color="black", lw=0.6, label="demand (jobs queued or running)")
    for r in reports:
        s = r.series
        assert s is not None
        top.plot(s.t / 3600, s.ready, lw=0.8, label=f"{r.policy}: ready replicas")
        hours, p99 = _hourly_p99(s.arrival, s.wait)
        bottom.plot(hours, p99, lw=0.8, label=r.policy)
    bottom.axhline(reports[0].slo_wait_s, color="grey", ls="--", lw=0.8, label="SLO wait")
    top.set_ylabel("jobs / replicas")
    bottom.set_ylabel("p99 queue wait per hour (s)")
    bottom.set_yscale("symlog", linthresh=1)
    bottom.set_xlabel(f"hours into {reports[0].trace}")
    top.legend(fontsize=7, loc="upper right")
    bottom.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hourly_p99(arrival: np.ndarray, wait: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hour = (arrival // 3600).astype(int)
    hours = np.unique(hour)
    return hours + 0.5, np.array([np.percentile(wait[hour == h], 99) for h in hours])


def plot_frontiers(reports: Sequence[Report], path: str | Path, *, target: float = 0.99) -> None:
    """Every policy's sweep points and frontier: SLO attainment against GPU-hours."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 6))
    for name in dict.fromkeys(r.policy for r in reports):
        points = [r for r in reports if r.policy == name]
        line = frontier(points)
        (drawn,) = ax.plot(
            [r.gpu_hours for r in line], [_clip(r.slo_attainment) for r in line], marker="o", label=name
        )
        ys = [_clip(r.slo_attainment) for r in points]
        ax.scatter([r.gpu_hours for r in points], ys, s=10, color=drawn.get_color())
    ax.axhline(target, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("logit")  # spreads 90 %, 99 %, 99.9 % evenly
    ticks = [0.1, 0.5, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]
    ax.set_yticks(ticks, [f"{t:.1%}" for t in ticks])
    ax.yaxis.set_minor_formatter("")
    ax.set_xlabel("GPU-hours (starting, loading and idle included)")
    ax.set_ylabel(f"SLO attainment (queue wait <= {reports[0].slo_wait_s:g} s)")
    ax.set_title(
        f"{reports[0].trace}: {reports[0].jobs} jobs, {reports[0].work_gpu_hours:.1f} GPU-hours of work"
    )
    ax.grid(True, which="both", lw=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _clip(attainment: float) -> float:
    """Keep 0 % and 100 % drawable on a logit axis."""
    return min(max(attainment, 1e-3), 1 - 1e-4)
