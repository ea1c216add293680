"""Run policies over a trace: one run per policy, or every policy across its knob grid."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from swell.brain.policies import POLICIES, knob_label, make_policy
from swell.core.errors import ValidationError
from swell.sim.cluster import PoolConfig
from swell.sim.engine import simulate
from swell.sim.report import Report
from swell.sim.trace import Trace


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


def run_policies(trace: Trace, names: Iterable[str], pool: PoolConfig) -> Iterator[Report]:
    for name in names:
        yield simulate(trace, make_policy(name), pool)


def sweep(
    trace: Trace, names: Iterable[str], pool: PoolConfig, *, on_point: Callable[[Report], None] | None = None
) -> list[Report]:
    """Every policy at every point of its grid (`POLICIES[name].grid`)."""
    reports = []
    for name in names:
        for knobs in POLICIES[name].grid:
            report = simulate(trace, make_policy(name, **knobs), pool, knob=knob_label(knobs))
            reports.append(report)
            if on_point:
                on_point(report)
    return reports


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
