"""Shared GPUs in the simulator: packing, the sharing slowdown, GPU-hours per physical GPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from swell.brain import placement
from swell.brain.context import Plan
from swell.brain.placement import LiveHolder, MoveKind, Phase
from swell.brain.policies import make_policy
from swell.core.errors import ValidationError
from swell.sim.cluster import PoolConfig
from swell.sim.engine import UP, Simulator, simulate
from swell.sim.trace import synthetic


def bare(**knobs: Any) -> PoolConfig:
    """Unguarded (the policy's count exactly), starts of exactly 100 s."""
    return PoolConfig(guardrails=False, start_jitter=0.0, gpu_start_seconds=100.0, **knobs)


def test_a_share_runs_at_the_gain_over_the_shares() -> None:
    """The seed: 3 shares finish the same work in 11.9 % less time than serially."""
    pool = PoolConfig(gpu_shares=3)
    assert pool.share_gain == pytest.approx(1 / 0.881)
    assert pool.share_speed == pytest.approx(1 / (3 * 0.881))
    serial = 3 * 10.0  # three 10-s jobs one after another on a whole GPU
    shared = 10.0 / pool.share_speed  # the same three at once, one per share
    assert shared == pytest.approx(serial * 0.881)
    assert PoolConfig().share_speed == 1.0


def test_one_job_on_a_share_takes_service_over_the_share_speed() -> None:
    trace = synthetic([0.0], [10.0])
    whole = simulate(trace, make_policy("static", replicas=1), bare())
    shared = simulate(trace, make_policy("static", replicas=1), bare(gpu_shares=3))
    up_and_loaded = 100.0 + PoolConfig().load_seconds(placement.Tier.REMOTE)
    assert whole.sim_seconds == pytest.approx(up_and_loaded + 10.0)
    assert shared.sim_seconds == pytest.approx(up_and_loaded + 10.0 * 3 * 0.881)


def test_replicas_pack_onto_one_gpu_and_gpu_hours_count_gpus() -> None:
    trace = synthetic([0.0, 5_000.0, 10_000.0], [10.0, 10.0, 10.0], ["a", "b", "c"])
    whole = simulate(trace, make_policy("static", replicas=3), bare())
    shared = simulate(trace, make_policy("static", replicas=3), bare(gpu_shares=3))
    assert whole.peak_gpus == 3 and shared.peak_gpus == 1
    assert whole.gpu_hours * 3600 == pytest.approx(3 * whole.sim_seconds)  # three GPUs, start to end
    assert shared.gpu_hours * 3600 == pytest.approx(shared.sim_seconds)  # one GPU
    assert shared.slo_attainment == whole.slo_attainment == 2 / 3  # the first waits for the start
    assert shared.gpu_hours == pytest.approx(
        shared.work_gpu_hours + shared.starting_gpu_hours + shared.loading_gpu_hours + shared.idle_gpu_hours
    )


def test_three_checkpoints_share_a_gpu_without_swapping() -> None:
    """Three checkpoints taking turns: whole GPU swaps between them; three shares hold all three."""
    arrival = np.arange(30) * 200.0
    models = ["a", "b", "c"] * 10
    trace = synthetic(arrival, np.full(30, 20.0), models)
    one = simulate(trace, make_policy("static", replicas=1), bare())
    three = simulate(trace, make_policy("static", replicas=3), bare(gpu_shares=3))
    assert sum(three.model_loads.values()) == 3 < sum(one.model_loads.values())
    assert three.peak_gpus == one.peak_gpus == 1
    assert three.series is not None and one.series is not None
    assert three.series.wait[3:].max() == 0.0  # once all three are loaded, no job waits
    assert one.series.wait[3:].min() > 0.0  # each waits for its checkpoint to be swapped in


def test_a_replica_added_to_an_up_gpu_skips_the_gpu_start() -> None:
    pool = bare(gpu_shares=2)
    sim = Simulator(synthetic([0.0], [1.0]), make_policy("static", replicas=1), pool)
    sim._acquire(0.0)
    sim._acquire(10.0)  # the GPU is still starting: the share comes up with it
    assert len(sim.gpus) == 1
    assert sorted(t for t, kind, *_ in sim.events if kind == UP) == [100.0, 100.0]
    next(iter(sim.gpus.values())).up_at = 0.0  # as if it had come up
    sim._release(sim.replicas[1], 40.0)
    sim._acquire(50.0)  # a free share on an up GPU: serving after a load, no GPU start
    assert len(sim.gpus) == 1 and 50.0 in [t for t, kind, *_ in sim.events if kind == UP]
    sim._acquire(60.0)  # full: a new GPU, started from scratch
    assert len(sim.gpus) == 2 and 160.0 in [t for t, kind, *_ in sim.events if kind == UP]


def test_pack_prefers_up_then_fullest_gpus() -> None:
    gpus = [("a", 1, True), ("b", 2, True), ("c", 2, False), ("d", 3, True)]
    assert placement.pack(gpus, 3) == "b"  # up, fullest with a free share
    assert placement.pack([("c", 2, False), ("e", 0, False)], 3) == "c"
    assert placement.pack([("d", 3, True)], 3) is None
    assert placement.pack([("a", 1, True)], 1) is None  # unshared: always a new GPU


def test_release_empties_the_emptiest_gpu_first() -> None:
    replicas = [LiveHolder(i, "m", Phase.READY) for i in range(3)]
    on = {0: 3, 1: 1, 2: 3}  # replica 1 sits alone on its GPU
    moves = placement.release(replicas, 1, {}, packed=lambda r: on[r.id])
    assert [(m.kind, m.replica) for m in moves] == [(MoveKind.EVICT, 1)]
    # without `packed`, the newest-acquired tie-break of the first version is unchanged
    assert placement.release(replicas, 1, {})[0].replica == 0


@pytest.mark.parametrize(
    ("knobs", "field"),
    [({"gpu_shares": 0}, "gpu_shares"), ({"gpu_shares": 2, "share_gain": 2.5}, "share_gain")],
)
def test_bad_sharing_settings_name_the_field(knobs: dict[str, float], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        PoolConfig(**knobs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_the_plan_expresses_fractional_replicas() -> None:
    plan = Plan(7, "x", {"a": 7}, gpu_share=1 / 3)
    assert plan.gpus == 3 and Plan(7).gpus == 7
    assert plan.with_replicas(2, "y").gpu_share == 1 / 3
    sim = Simulator(synthetic([0.0], [1.0]), make_policy("static", replicas=4), bare(gpu_shares=3))
    report = sim.run()
    assert sim.plan.gpu_share == pytest.approx(1 / 3) and sim.plan.gpus == 2 == report.peak_gpus
