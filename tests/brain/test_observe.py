"""The observation layer's rules, fed by hand: work estimates, SLO accounting, replicas, checkpoints."""

from __future__ import annotations

import pytest

from swell.brain.observe import (
    PRIOR_JOBS,
    Arrived,
    Dropped,
    Finished,
    Observer,
    ReplicaSnapshot,
    Requeued,
    Started,
    work_prior,
)
from swell.core.errors import ValidationError
from swell.core.replicas import ReplicaState


def observer(**kw: object) -> Observer:
    return Observer(tick_seconds=10, start_seconds=100, slo_wait=30, **kw)  # type: ignore[arg-type]


def test_work_is_estimated_at_arrival_from_a_prior_sized_by_the_first_job() -> None:
    obs = observer(prior=work_prior("diffusers"))
    assert obs.arrive("a", 0.0, units=30) == pytest.approx(21.0)  # 0.7 s per step, 30 steps
    assert obs.rate is not None and obs.rate.prior_units == PRIOR_JOBS * 30
    obs.start("a", 1.0)
    obs.finish("a", 31.0, seconds=30.0)  # 1 s per step, learned
    learned = (30.0 + 0.7 * 300) / (30 + 300)
    assert obs.arrive("b", 40.0, units=30) == pytest.approx(30 * learned)
    assert obs.arrive("b", 41.0, units=999) == pytest.approx(30 * learned), "seen before: kept"
    assert work_prior("callable") == 1.0


def test_context_counts_queued_running_and_arrivals_once() -> None:
    obs = observer()
    for job, model in (("a", "m1"), ("b", "m1"), ("c", "m2")):
        obs.apply(Arrived(job, 0.0, 1.0, model))
    obs.apply(Started("a", 1.0))
    ctx = obs.context(10.0)
    assert (ctx.arrived, ctx.queued, ctx.running) == (3, 2, 1)
    assert ctx.queued_work == pytest.approx(2.0) and ctx.arrived_work == pytest.approx(3.0)
    assert ctx.running_until == (2.0,)  # started at 1 s with 1 s of estimated work
    assert ctx.models["m1"].queued == 1 and ctx.models["m1"].running == 1
    assert ctx.models["m2"].queued_work == pytest.approx(1.0)
    again = obs.context(20.0)
    assert again.arrived == 0 and again.arrived_work == 0.0 and again.queued == 2
    assert again.models["m1"].arrived_work == 0.0


def test_a_requeued_job_counts_once_and_a_finished_one_leaves() -> None:
    obs = observer()
    obs.apply(Arrived("a", 0.0))
    obs.apply(Started("a", 5.0))
    obs.apply(Requeued("a", 6.0))
    assert (obs.queued, obs.running) == (1, 0)
    obs.apply(Started("a", 50.0))  # its second start, late, is not a second outcome
    assert obs.attainment(50.0) == 1.0
    obs.apply(Finished("a", 60.0, seconds=None))  # failed: nothing learned
    assert obs.rate is not None and obs.rate.units == 0
    obs.apply(Arrived("b", 61.0))
    obs.apply(Dropped("b", 62.0))
    ctx = obs.context(70.0)
    assert (ctx.queued, ctx.running) == (0, 0) and "b" not in obs


def test_slo_attainment_counts_starts_in_the_window_and_every_late_queued_job() -> None:
    obs = observer(window=100.0)
    assert obs.attainment(0.0) is None
    obs.arrive("ok", 0.0)
    obs.start("ok", 10.0)  # waited 10 s <= 30
    obs.arrive("slow", 0.0)
    obs.start("slow", 40.0)  # waited 40 s
    for job in ("q1", "q2", "q3"):
        obs.arrive(job, 20.0)
    assert obs.attainment(45.0) == pytest.approx(1 / 2)  # q* have waited 25 s: not late yet
    assert obs.attainment(60.0) == pytest.approx(1 / 5)  # now each of them is a miss already
    obs.start("q1", 61.0)  # it starts: one miss, counted once (as a start)
    assert obs.attainment(61.0) == pytest.approx(1 / 5)
    assert obs.attainment(200.0) == 0.0  # the starts left the window; q2 and q3 are still late


def test_replicas_come_from_the_snapshot() -> None:
    obs = observer()
    obs.arrive("a", 0.0, model="m1")
    obs.replicas([
        ReplicaSnapshot("r1", "img", ("m1",), ReplicaState.BUSY, busy=1),
        ReplicaSnapshot("r2", "img", ("m2",), ReplicaState.LOADING, loading_since=1.0),
        ReplicaSnapshot("r3", "img", (), ReplicaState.STARTING),
        ReplicaSnapshot("r4", "img", ("m3",), ReplicaState.DRAINING),
        ReplicaSnapshot("r5", "img", ("m1",), ReplicaState.DEAD),
    ])  # fmt: skip
    ctx = obs.context(5.0)
    assert (ctx.replicas, ctx.ready) == (3, 1)
    assert {m: load.replicas for m, load in ctx.models.items()} == {"m1": 1, "m2": 1, "m3": 0}


def test_running_until_can_be_given_or_left_out() -> None:
    obs = observer(track_ends=False)
    obs.arrive("a", 0.0)
    obs.start("a", 0.0, until=99.0)
    assert obs.context(1.0).running_until == ()
    assert obs.running_until() == (99.0,)


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        Observer(tick_seconds=10, start_seconds=0, slo_wait=0)
    assert err.value.field == "observer"
