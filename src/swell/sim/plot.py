"""Plots (matplotlib, Agg backend, imported only when a plot is asked for)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from swell.core.errors import ValidationError
from swell.sim.report import Report
from swell.sim.sweep import frontier


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_runs(reports: Sequence[Report], path: str | Path, *, bin_seconds: float = 600.0) -> None:
    """Peak demand and each policy's mean ready replicas per bin; each policy's hourly p99 wait."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    for r in reports:
        s = r.series
        assert s is not None
        hours, ready = _binned(s.t, s.ready, bin_seconds, "mean")
        top.step(hours, ready, where="post", lw=0.8, label=f"{r.policy}: ready replicas (mean)")
        hours, p99 = _hourly_p99(s.arrival, s.wait)
        bottom.plot(hours, p99, lw=0.8, marker=".", ms=3, label=r.policy)
    first = reports[0].series
    assert first is not None
    hours, demand = _binned(first.t, first.demand, bin_seconds, "max")
    top.step(
        hours, demand, where="post", color="black", lw=0.6, label="demand: jobs queued or running (peak)"
    )
    bottom.axhline(reports[0].slo_wait_s, color="grey", ls="--", lw=0.8, label="SLO wait")
    top.set_ylabel(f"per {bin_seconds / 60:.0f} min")
    bottom.set_ylabel("p99 queue wait per hour (s)")
    bottom.set_yscale("symlog", linthresh=1)
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel(f"hours into {reports[0].trace}")
    top.legend(fontsize=7, loc="upper left")
    bottom.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _binned(t: np.ndarray, values: np.ndarray, width: float, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Per `width`-second bin of the sorted times `t`: the max or the mean of `values`."""
    if len(t) == 0:
        return t, values
    index = (t // width).astype(int)
    starts = np.flatnonzero(np.diff(index, prepend=-1))
    values = values.astype(float)
    if how == "max":
        reduced = np.maximum.reduceat(values, starts)
    else:
        reduced = np.add.reduceat(values, starts) / np.diff(np.append(starts, len(values)))
    return index[starts] * width / 3600, reduced


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


def plot_day(
    report: Report,
    batch: Sequence[int] | np.ndarray,
    path: str | Path,
    *,
    day: int = 0,
    bin_seconds: float = 300.0,
) -> None:
    """One day of a replay: interactive demand, ready capacity and the replicas running batch work
    (`batch`: per policy tick, as `Simulator.batch_samples` records it) per bin on top; every job's
    queue wait, its hourly p99 and the SLO below."""
    s = report.series
    if s is None or len(s.t) != len(batch):
        raise ValidationError(
            "plot_day needs the report's series and one batch sample per tick", field="batch"
        )
    plt = _pyplot()
    lo, hi = day * 86_400.0, (day + 1) * 86_400.0
    tick = (s.t >= lo) & (s.t < hi)
    t = s.t[tick] - lo
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    hours, ready = _binned(t, s.ready[tick], bin_seconds, "mean")
    _, running = _binned(t, np.asarray(batch)[tick], bin_seconds, "mean")
    _, demand = _binned(t, s.demand[tick], bin_seconds, "max")
    top.fill_between(
        hours,
        0,
        running,
        step="post",
        color="tab:green",
        alpha=0.35,
        lw=0,
        label="replicas running batch work (mean)",
    )
    top.step(hours, ready, where="post", color="tab:blue", lw=1.0, label="ready replicas (mean)")
    top.step(
        hours,
        demand,
        where="post",
        color="black",
        lw=0.6,
        label="interactive demand: jobs queued or running (peak)",
    )
    top.set_ylabel(f"per {bin_seconds / 60:.0f} min")
    job = (s.arrival >= lo) & (s.arrival < hi)
    arrival, wait = s.arrival[job] - lo, s.wait[job]
    bottom.scatter(arrival / 3600, wait, s=3, color="tab:grey", alpha=0.5, label="a job's queue wait")
    if len(arrival):
        ph, p99 = _hourly_p99(arrival, wait)
        bottom.plot(ph, p99, color="tab:red", marker="o", ms=4, ls="none", label="p99 per hour")
    bottom.axhline(report.slo_wait_s, color="grey", ls="--", lw=0.8, label="SLO wait")
    bottom.set_yscale("symlog", linthresh=1)
    bottom.set_ylim(bottom=0)
    bottom.set_ylabel("queue wait (s)")
    bottom.set_xlabel(f"hour of day {day} of {report.trace} ({report.policy} {report.knob})")
    bottom.set_xlim(0, 24)
    top.legend(fontsize=7, loc="upper left")
    bottom.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
