"""Each policy's pure decisions on hand-made contexts, and the shared wrappers."""

from __future__ import annotations

import numpy as np
import pytest

from swell.brain.context import Arrival, Context, ModelLoad, Plan
from swell.brain.forecast import DailyProfile, ProfileTrust, RateEwma, WorkRate
from swell.brain.guardrails import Bounded, Delayed, RateLimited, SloFallback
from swell.brain.policies import (
    POLICIES,
    Clairvoyant,
    PerReplica,
    Predictive,
    Static,
    Swell,
    SwellState,
    make_policy,
)
from swell.core.errors import ValidationError


def ctx(now: float = 0.0, **kw: object) -> Context:
    base: dict[str, object] = {"tick_seconds": 10.0, "start_seconds": 100.0, "slo_wait": 30.0}
    return Context(now=now, **{**base, **kw})  # type: ignore[arg-type]


def test_static_is_fixed() -> None:
    plan, _ = Static(3).decide(ctx(queued=50), None)
    assert plan.replicas == 3


def test_per_replica_rounds_up_jobs_over_target() -> None:
    assert PerReplica(2).decide(ctx(queued=3, running=2), None)[0].replicas == 3
    assert PerReplica(1).decide(ctx(queued=3, running=2, slots=4), None)[0].replicas == 2


def test_queue_length_scales_up_at_once_and_down_after_cooldown() -> None:
    policy = make_policy("queue-length", target=1, cooldown=300)
    state = policy.initial()
    plan, state = policy.decide(ctx(0, queued=4), state)
    assert plan.replicas == 4
    plan, state = policy.decide(ctx(10), state)
    assert plan.replicas == 4 and "held" in plan.reason
    plan, state = policy.decide(ctx(300), state)
    assert plan.replicas == 4
    plan, state = policy.decide(ctx(310), state)
    assert plan.replicas == 0


def test_concurrency_waits_for_the_upscale_delay() -> None:
    policy = make_policy("concurrency", target=1, up_delay=30, down_delay=600)
    state = policy.initial()
    plan, state = policy.decide(ctx(0, queued=2), state)
    assert plan.replicas == 0
    plan, state = policy.decide(ctx(20, queued=2), state)
    assert plan.replicas == 0
    plan, state = policy.decide(ctx(30, queued=5), state)
    assert plan.replicas == 5
    plan, state = policy.decide(ctx(40), state)  # the demand vanished: held for down_delay
    assert plan.replicas == 5


def test_delay_resets_when_demand_returns() -> None:
    policy = Delayed(PerReplica(1), up_delay=0, down_delay=100)
    state = policy.initial()
    _, state = policy.decide(ctx(0, queued=3), state)
    _, state = policy.decide(ctx(50), state)
    _, state = policy.decide(ctx(60, queued=3), state)  # back up: the down timer restarts
    plan, state = policy.decide(ctx(120), state)
    assert plan.replicas == 3
    plan, _ = policy.decide(ctx(220), state)
    assert plan.replicas == 0


def test_bounds_clamp_both_ways() -> None:
    low = Bounded(Static(0), low=2, high=5)
    high = Bounded(Static(9), low=2, high=5)
    assert low.decide(ctx(), low.initial())[0].replicas == 2
    plan = high.decide(ctx(), high.initial())[0]
    assert plan.replicas == 5 and "bounded" in plan.reason


def test_rate_limit_holds_changes_beyond_the_budget() -> None:
    policy = RateLimited(PerReplica(1), max_changes=2, window=60)
    state = policy.initial()
    counts = []
    for t, queued in [(0, 1), (10, 2), (20, 3), (30, 4), (61, 5)]:
        plan, state = policy.decide(ctx(t, queued=queued), state)
        counts.append(plan.replicas)
    assert counts == [1, 2, 2, 2, 5]


def test_slo_fallback_takes_the_reactive_plan_only_while_breached() -> None:
    policy = SloFallback(Static(1), PerReplica(1), target=0.99)
    state = policy.initial()
    plan, state = policy.decide(ctx(queued=6, attainment=1.0), state)
    assert plan.replicas == 1
    plan, state = policy.decide(ctx(queued=6, attainment=0.8), state)
    assert plan.replicas == 6 and "SLO" in plan.reason
    plan, _ = policy.decide(ctx(queued=0, attainment=0.5), state)
    assert plan.replicas == 1  # falling back never shrinks below the primary plan


def test_predictive_provisions_ahead_and_goes_reactive_on_a_miss() -> None:
    policy = Predictive(horizon=600, margin=0.0)
    state = policy.initial()
    plan, state = policy.decide(ctx(0, arrived_work=1200.0), state)  # 1200 GPU-s over 600 s: 2 GPUs
    assert plan.replicas == 2 and "forecast" in plan.reason
    plan, _ = policy.decide(ctx(10, queued=7), state)
    assert plan.replicas == 7 and "missed" in plan.reason


def test_swell_weighs_work_not_requests() -> None:
    light = Swell(seasonal=False).decide(ctx(queued=4, queued_work=40.0), Swell().initial())[0]
    heavy = Swell(seasonal=False).decide(ctx(queued=4, queued_work=400.0), Swell().initial())[0]
    assert light.replicas == 2  # 40 GPU-s drain within the 30 s SLO on 2 replicas
    assert heavy.replicas == 14


def test_swell_graded_keep_alive_releases_burst_capacity_first() -> None:
    policy = Swell(keep_alive=1000, grade=1.0, burst_margin=0.0, seasonal=False)
    _, state = policy.decide(ctx(0, running=4), policy.initial())
    kept = {t: policy.decide(ctx(t), state)[0].replicas for t in (100, 300, 400, 600, 999, 1001)}
    assert kept == {100: 4, 300: 3, 400: 2, 600: 1, 999: 1, 1001: 0}


def test_swell_places_queued_checkpoints_and_warms_the_busiest() -> None:
    policy = Swell(warm_models=1, seasonal=False)
    models = {
        "a": ModelLoad(queued=1, queued_work=20.0, arrived_work=20.0),
        "b": ModelLoad(queued=3, queued_work=90.0, arrived_work=90.0),
    }
    plan, _ = policy.decide(
        ctx(queued=4, queued_work=110.0, arrived_work=110.0, models=models), policy.initial()
    )
    assert plan.models["a"] >= 1 and plan.models["b"] > plan.models["a"]
    assert sum(plan.models.values()) == plan.replicas
    assert plan.warm == ("b",)


def test_clairvoyant_holds_the_coming_peak() -> None:
    future = (Arrival(20, 50), Arrival(30, 50), Arrival(90, 10))
    early = Clairvoyant().decide(ctx(0, future=future, running_until=(25.0,)), None)[0]
    late = Clairvoyant().decide(ctx(0, future=future, running_until=(35.0,)), None)[0]
    assert early.replicas == 2  # the running job ends before the second arrival
    assert late.replicas == 3  # at t=30 it still runs beside both arrivals


def test_registry_builds_every_grid_point_and_names_bad_input() -> None:
    for name, spec in POLICIES.items():
        for knobs in spec.grid:
            assert make_policy(name, **knobs).name == name
    with pytest.raises(ValidationError) as err:
        make_policy("nope")
    assert err.value.field == "policy"
    with pytest.raises(ValidationError):
        make_policy("static", bogus=1)


def test_daily_profile_answers_only_after_a_day() -> None:
    profile = DailyProfile(slot_seconds=3600)
    profile = profile.observe(3600 * 5, 100.0)
    assert profile.expected(3600 * 5, 3600) == 0.0
    profile = profile.observe(86_400 + 3600, 0.0)
    assert profile.expected(86_400 + 3600 * 5, 3600) == pytest.approx(100.0)


def test_rate_estimators() -> None:
    r = RateEwma(100.0).observe(0.0, 100.0)
    assert r.rate == pytest.approx(1.0)
    assert r.observe(100.0, 0.0).rate == pytest.approx(0.3679, rel=1e-3)
    w = WorkRate(prior=1.0, prior_units=10).observe(300.0, 100.0)
    assert w.estimate(10) == pytest.approx(10 * 310 / 110)


def test_plan_with_replicas_keeps_placement() -> None:
    plan = Plan(2, "x", {"a": 2}, ("a",)).with_replicas(3, "y")
    assert plan == Plan(3, "y", {"a": 2}, ("a",))


def test_swell_takes_its_counts_as_the_floats_yaml_gives() -> None:
    """`brain.options` is dict[str, float]: `{warm_models: 2}` arrives as 2.0."""
    policy = make_policy("swell", warm_models=2.0, max_tracked=16.0, seasonal=0.0)
    assert isinstance(policy, Swell) and policy.warm_models == 2 and policy.seasonal is False
    models = {m: ModelLoad(queued=1, queued_work=10.0, arrived_work=10.0) for m in "abc"}
    plan, _ = policy.decide(
        ctx(queued=3, queued_work=30.0, arrived_work=30.0, models=models), policy.initial()
    )
    assert len(plan.warm) == 2
    plan, _ = policy.decide(ctx(queued=40, queued_work=4000.0), policy.initial())  # need above max_tracked
    assert plan.replicas > 16
    with pytest.raises(ValidationError) as err:
        make_policy("swell", warm_models=1.5)
    assert err.value.field == "warm_models"


def test_a_clamped_plan_trims_its_placement_to_fit() -> None:
    plan = Plan(6, "x", {"a": 4, "b": 1, "c": 1}, ("a",))
    assert plan.with_replicas(4, "y").models == {"a": 2, "b": 1, "c": 1}
    assert plan.with_replicas(2, "y").models == {"a": 1, "c": 1}  # the busiest keeps one
    assert plan.with_replicas(8, "y").models == plan.models
    bounded = Bounded(Static(1), low=0, high=1)
    assert bounded.decide(ctx(), bounded.initial())[0].models == {}


def run_ticks(policy: Swell, state: SwellState, ticks: list[Context]) -> tuple[Plan, SwellState]:
    plan = Plan(0)
    for c in ticks:
        plan, state = policy.decide(c, state)
    return plan, state


def test_swell_headroom_grows_after_misses_and_decays_when_met() -> None:
    policy = Swell(keep_alive=1000, grade=1.0, burst_margin=0.0, seasonal=False, react=100, relax=1000)
    _, start = policy.decide(ctx(0, running=2), policy.initial())
    missed = [ctx(10 * k, attainment=0.5) for k in range(1, 11)]  # 100 s below target
    met = [ctx(10 * k, attainment=1.0) for k in range(1, 11)]
    _, after_misses = run_ticks(policy, start, missed)
    _, after_met = run_ticks(policy, start, met)
    assert after_misses.pressure == pytest.approx(1.0)
    assert after_met.pressure == 0.0
    # the same quiet hour after each: the missed run holds its first replica twice as long
    held = policy.decide(ctx(1500, attainment=None), after_misses)[0]
    released = policy.decide(ctx(1500, attainment=None), after_met)[0]
    assert held.replicas == 1 and "(x2)" in held.reason
    assert released.replicas == 0
    # met ticks take the pressure back down at tick / relax per tick, never below 0
    _, relaxed = run_ticks(policy, after_misses, [ctx(100 + 10 * k, attainment=1.0) for k in range(1, 51)])
    assert relaxed.pressure == pytest.approx(0.5)
    capped = Swell(react=10, max_pressure=2.0)
    _, state = run_ticks(capped, capped.initial(), [ctx(10 * k, attainment=0.0) for k in range(30)])
    assert state.pressure == 2.0


def test_swell_headroom_raises_the_kept_level_under_pressure() -> None:
    policy = Swell(keep_alive=1000, grade=0.0, burst_margin=0.0, seasonal=False, react=10, headroom=0.5)
    _, state = policy.decide(ctx(0, running=4, attainment=0.5), policy.initial())  # pressure 1
    plan, _ = policy.decide(ctx(10, attainment=1.0), state)
    assert plan.replicas == 6  # 4 kept x (1 + 0.5 x 1)


def test_profile_trust_drops_when_the_daily_rhythm_stops() -> None:
    slot = 900.0
    profile, trust = DailyProfile(slot_seconds=slot), ProfileTrust(weight=0.6)
    for t in np.arange(0, 3 * 86_400, 300.0):  # work every day in the first slot of the day
        work = 10.0 if (t % 86_400) < slot and t < 86_400 * 2 else 0.0
        trust = trust.observe(profile, float(t), work)
        profile = profile.observe(float(t), work)
        if t == 86_400 + 2 * slot:
            assert trust.trusted and trust.score == 1.0  # day 2 came as day 1 said
    assert not trust.trusted  # day 3's first slot stayed empty: the profile was wrong
