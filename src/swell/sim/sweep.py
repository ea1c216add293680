"""Run policies over a trace: one run per policy, or every policy across its knob grid.

Runs are independent and deterministic, so `run_points` may spread them over processes
(`jobs > 1`, started with `spawn`: no state is inherited from the parent, and the results, returned
in submission order, are the ones a serial run gives). Progress goes to a callback, one call per
finished run; `Progress` prints it on stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import TextIO

from swell.brain.policies import POLICIES, knob_label, make_policy
from swell.core.errors import ValidationError
from swell.sim.cluster import PoolConfig
from swell.sim.engine import simulate
from swell.sim.report import Report
from swell.sim.trace import Trace


@dataclass(frozen=True, slots=True)
class Point:
    """One run to do: a policy at one setting of its knobs on one trace."""

    trace: Trace
    policy: str
    knobs: Mapping[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return knob_label(self.knobs)


OnDone = Callable[[int, int, Point, Report], None]  # (done, total, point, report)


def policy_names(policy: str) -> list[str]:
    """`all` or a comma-separated list of registered names."""
    names = list(POLICIES) if policy == "all" else [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [n for n in names if n not in POLICIES]
    if unknown or not names:
        raise ValidationError(
            f"unknown policy {', '.join(unknown) or policy!r}; known: all, {', '.join(POLICIES)}",
            field="policy",
        )
    return names


def run_point(point: Point, pool: PoolConfig) -> Report:
    """One simulated run (a module-level function, so worker processes can be handed it)."""
    return simulate(point.trace, make_policy(point.policy, **point.knobs), pool, knob=point.label)


def run_points(
    points: Sequence[Point], pool: PoolConfig, *, jobs: int = 1, on_done: OnDone | None = None
) -> list[Report]:
    """Every point's report, in the order of `points`, on up to `jobs` processes."""
    if jobs < 1:
        raise ValidationError("jobs must be >= 1", field="jobs")
    if jobs == 1 or len(points) <= 1:
        return [_done(i, len(points), p, run_point(p, pool), on_done) for i, p in enumerate(points)]
    with ProcessPoolExecutor(min(jobs, len(points)), mp_context=get_context("spawn")) as ex:
        futures = [ex.submit(run_point, p, pool) for p in points]
        reports = []
        for i, (p, f) in enumerate(zip(points, futures, strict=True)):
            reports.append(_done(i, len(points), p, f.result(), on_done))
        return reports


def _done(i: int, total: int, point: Point, report: Report, on_done: OnDone | None) -> Report:
    if on_done:
        on_done(i + 1, total, point, report)
    return report


def grid_points(trace: Trace, names: Iterable[str]) -> list[Point]:
    """Every policy at every point of its grid (`POLICIES[name].grid`)."""
    return [Point(trace, name, dict(knobs)) for name in names for knobs in POLICIES[name].grid]


def run_policies(trace: Trace, names: Iterable[str], pool: PoolConfig) -> Iterator[Report]:
    for name in names:
        yield simulate(trace, make_policy(name), pool)


def sweep(
    trace: Trace,
    names: Iterable[str],
    pool: PoolConfig,
    *,
    on_point: Callable[[Report], None] | None = None,
    jobs: int = 1,
    on_done: OnDone | None = None,
) -> list[Report]:
    """Every policy at every point of its grid; `on_point` sees each report in grid order."""

    def done(i: int, total: int, point: Point, report: Report) -> None:
        if on_done:
            on_done(i, total, point, report)
        if on_point:
            on_point(report)

    return run_points(grid_points(trace, names), pool, jobs=jobs, on_done=done)


class Progress:
    """`[done/total] policy knob: attainment, GPU-hours (elapsed)` lines on a stream (stderr)."""

    def __init__(
        self, what: str = "sweep", stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.what, self.stream, self.clock = what, stream or sys.stderr, clock
        self.started = clock()

    def __call__(self, done: int, total: int, point: Point, report: Report) -> None:
        elapsed = self.clock() - self.started
        self.stream.write(
            f"{self.what} [{done}/{total}] {point.policy} {point.label} on {point.trace.name}: "
            f"{report.slo_attainment:.2%}, {report.gpu_hours:.1f} GPU-h ({elapsed:.0f} s elapsed)\n"
        )
        self.stream.flush()


def frontier(reports: Iterable[Report]) -> list[Report]:
    """The points no other point beats on both GPU-hours and SLO attainment, cheapest first."""
    out: list[Report] = []
    for r in sorted(reports, key=lambda r: (r.gpu_hours, -r.slo_attainment)):
        if not out or r.slo_attainment > out[-1].slo_attainment:
            out.append(r)
    return out


def cheapest_at(reports: Iterable[Report], target: float) -> Report | None:
    """The cheapest run that reached `target` attainment, or None."""
    meeting = [r for r in reports if r.slo_attainment >= target]
    return min(meeting, key=lambda r: r.gpu_hours) if meeting else None
