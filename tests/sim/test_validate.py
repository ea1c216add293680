"""Rolling-origin validation: the fold split and day cuts (pure), the picks, one tiny end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest

from swell.core.errors import ValidationError
from swell.sim.cluster import PoolConfig
from swell.sim.report import Report
from swell.sim.trace import synthetic
from swell.sim.validate import DAY, Fold, day_starts, folds, pick, rows, validate, window


def test_folds_tune_on_a_prefix_and_test_on_the_next_days() -> None:
    assert folds(13) == [
        Fold((1, 5), (6, 7)),
        Fold((1, 7), (8, 9)),
        Fold((1, 9), (10, 11)),
        Fold((1, 11), (12, 13)),
    ]
    assert folds(12, origins=(11,), test_days=2) == [Fold((1, 11), (12, 12))]  # cut at the last day
    assert Fold((1, 5), (6, 7)).label == "tune 1-5, test 6-7"
    with pytest.raises(ValidationError) as err:
        folds(5, origins=(5,))
    assert err.value.field == "origins"
    with pytest.raises(ValidationError):
        folds(5, origins=(2,), test_days=0)


def test_days_are_cut_at_the_hour_after_the_first_arrival() -> None:
    first = 16 * 3600 + 57 * 60 + 50  # the image trace starts at 16:57:50
    starts = day_starts(3 * DAY, first, cut_hour=12)
    assert starts[0] == 0 and starts[1] == pytest.approx(19 * 3600 + 2 * 60 + 10)
    assert np.allclose(np.diff(starts[1:]), DAY) and len(starts) == 4
    assert day_starts(DAY / 2, 0.0, cut_hour=0).tolist() == [0.0]  # a cut exactly at the start is no cut
    with pytest.raises(ValidationError):
        day_starts(DAY, 0.0, cut_hour=24)


def test_a_window_holds_its_days_jobs_retimed() -> None:
    trace = synthetic([0, 10, DAY + 5, DAY + 50, 2 * DAY + 1], [1, 1, 1, 1, 1])
    starts = np.array([0.0, DAY, 2 * DAY])
    second = window(trace, starts, (2, 2))
    assert len(second) == 2 and second.arrival.tolist() == [0.0, 45.0] and "days 2" in second.name
    assert len(window(trace, starts, (2, 3))) == 3
    with pytest.raises(ValidationError):
        window(synthetic([0, 10], [1, 1]), np.array([0.0, DAY, 2 * DAY]), (2, 2))


def point(gpu_hours: float, attainment: float) -> Report:
    return Report(
        policy="p", knob=f"{gpu_hours:g}", trace="t", jobs=10, slo_wait_s=30, slo_attainment=attainment,
        p50_wait_s=0, p99_wait_s=0, max_wait_s=0, gpu_hours=gpu_hours, work_gpu_hours=1, starting_gpu_hours=0,
        loading_gpu_hours=0, idle_gpu_hours=0, model_loads={}, scale_actions=0, peak_gpus=1,
        demand_over_ready_s=0, sim_seconds=1,
    )  # fmt: skip


def test_pick_is_the_cheapest_at_target_else_the_best_attainment() -> None:
    assert pick([point(10, 0.98), point(30, 0.995), point(20, 0.991)], 0.99).gpu_hours == 20
    assert pick([point(10, 0.98), point(30, 0.97), point(20, 0.98)], 0.99).gpu_hours == 10


def bursty_days(days: int) -> list[float]:
    """Each day: a quiet morning, then bursts of 2-4 jobs in the evening."""
    rng = np.random.default_rng(7)
    out: list[float] = []
    for d in range(days):
        for burst in range(6):
            at = d * DAY + 18 * 3600 + burst * 1800 + float(rng.integers(0, 600))
            out += [at + 3 * k for k in range(int(rng.integers(2, 5)))]
    return sorted(out)


def test_validate_end_to_end_on_a_small_trace() -> None:
    arrival = bursty_days(4)
    trace = synthetic(arrival, [40.0] * len(arrival), name="tiny")
    starts = day_starts(trace.span, 0.0, cut_hour=12)
    fold_list = folds(len(starts), origins=(2, 3), test_days=1)
    pool = PoolConfig(tick_seconds=60)
    v = validate(trace, ["static", "clairvoyant"], pool, starts=starts, fold_list=fold_list)
    assert v.policies() == ["static", "clairvoyant"] and len(v.results) == 4
    for r in v.of("static"):
        assert r.test.trace.endswith(f"[days {r.fold.test[0]}]") and r.test.knob == r.tune.knob
        if r.hindsight is not None:  # the cheapest static pool that met the target on the test day
            assert r.hindsight.slo_attainment >= 0.99 and r.hindsight.gpu_hours <= r.test.gpu_hours + 1e-9
    pooled = v.pooled_tuned("static")
    assert pooled.jobs == sum(r.test.jobs for r in v.of("static"))
    table = rows(v)
    assert [r["kind"] for r in table] == ["fold"] * 4 + ["pooled"] * 2
    assert {r["policy"] for r in table} == {"static", "clairvoyant"}
