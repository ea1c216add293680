"""Frontier and target helpers of the sweep."""

from __future__ import annotations

import pytest

from swell.core.errors import ValidationError
from swell.sim.report import Report
from swell.sim.sweep import cheapest_at, frontier, policy_names


def point(policy: str, gpu_hours: float, attainment: float) -> Report:
    return Report(
        policy=policy, knob=f"{gpu_hours:g}", trace="t", jobs=1, slo_wait_s=30, slo_attainment=attainment,
        p50_wait_s=0, p99_wait_s=0, max_wait_s=0, gpu_hours=gpu_hours, work_gpu_hours=1, starting_gpu_hours=0,
        loading_gpu_hours=0, idle_gpu_hours=0, model_loads={}, scale_actions=0, peak_gpus=1,
        demand_over_ready_s=0, sim_seconds=1,
    )  # fmt: skip


def test_frontier_keeps_only_undominated_points_cheapest_first() -> None:
    points = [point("a", 10, 0.9), point("a", 20, 0.85), point("a", 30, 0.99), point("a", 5, 0.5)]
    assert [p.gpu_hours for p in frontier(points)] == [5, 10, 30]


def test_cheapest_at_target() -> None:
    points = [point("a", 10, 0.98), point("a", 30, 0.995), point("a", 20, 0.991)]
    best = cheapest_at(points, 0.99)
    assert best is not None and best.gpu_hours == 20
    assert cheapest_at(points, 0.999) is None


def test_policy_names() -> None:
    assert policy_names("swell, static") == ["swell", "static"]
    assert "clairvoyant" in policy_names("all")
    with pytest.raises(ValidationError) as err:
        policy_names("swell,nope")
    assert err.value.field == "policy" and "nope" in err.value.message


def test_parallel_runs_equal_serial_runs_in_order() -> None:
    import io

    from swell.sim.cluster import PoolConfig
    from swell.sim.sweep import Point, Progress, run_points
    from swell.sim.trace import synthetic

    trace = synthetic([0, 5, 60, 400, 420, 900], [30, 20, 50, 10, 40, 25], ["a", "b", "a", "b", "a", "a"])
    points = [Point(trace, "static", {"replicas": 1}), Point(trace, "swell"), Point(trace, "clairvoyant")]
    points += [Point(trace, "queue-length", {"target": 1, "cooldown": c}) for c in (60, 600)]
    pool = PoolConfig(seed=3)
    stream = io.StringIO()
    ticks = iter(range(100))
    serial = run_points(points, pool, jobs=1)
    parallel = run_points(
        points, pool, jobs=2, on_done=Progress("t", stream, clock=lambda: float(next(ticks)))
    )
    assert [r.to_json() for r in parallel] == [r.to_json() for r in serial]
    assert [r.policy for r in parallel] == ["static", "swell", "clairvoyant", "queue-length", "queue-length"]
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5 and lines[0].startswith("t [1/5] static replicas=1 on synthetic: ")
    assert (
        lines[-1].startswith("t [5/5] queue-length target=1 cooldown=600")
        and "GPU-h (5 s elapsed)" in lines[-1]
    )
    with pytest.raises(ValidationError):
        run_points(points, pool, jobs=0)
