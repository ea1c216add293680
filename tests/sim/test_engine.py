"""Simulator invariants on small synthetic traces."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from swell.brain.guardrails import guarded
from swell.brain.policies import POLICIES, make_policy
from swell.core.errors import ValidationError
from swell.sim.cluster import PoolConfig, Tier
from swell.sim.engine import simulate
from swell.sim.trace import Trace, synthetic


def bursty(seed: int = 1, n: int = 120) -> Trace:
    rng = np.random.default_rng(seed)
    bursts = rng.uniform(0, 20_000, size=8)
    arrival = np.sort(np.concatenate([b + rng.exponential(20, size=n // 8).cumsum() for b in bursts]))
    service = rng.uniform(5, 60, size=len(arrival))
    models = [f"m{k}" for k in rng.integers(0, 3, size=len(arrival))]
    return synthetic(arrival, service, models)


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_job_finishes_and_gpu_time_covers_the_work(name: str) -> None:
    trace = bursty()
    report = simulate(trace, make_policy(name), PoolConfig(gpu_start_seconds=60))
    assert report.jobs == len(trace)
    assert report.series is not None and not np.isnan(report.series.wait).any()
    assert report.gpu_hours >= report.work_gpu_hours > 0
    assert report.gpu_hours == pytest.approx(
        report.work_gpu_hours + report.starting_gpu_hours + report.loading_gpu_hours + report.idle_gpu_hours
    )
    assert 0.0 <= report.slo_attainment <= 1.0 and report.p99_wait_s >= report.p50_wait_s >= 0
    assert sum(report.model_loads.values()) >= 3  # each checkpoint is loaded at least once


def test_clairvoyant_never_makes_a_job_wait_when_starts_and_loads_are_free() -> None:
    pool = PoolConfig(gpu_start_seconds=0, init_seconds=0, model_gb=0, start_jitter=0)
    report = simulate(bursty(seed=3), make_policy("clairvoyant"), pool)
    assert report.max_wait_s == 0.0 and report.slo_attainment == 1.0


def test_deterministic_for_a_seed() -> None:
    trace = bursty(seed=2)
    one = simulate(trace, make_policy("swell"), PoolConfig(seed=7)).to_json()
    two = simulate(trace, make_policy("swell"), PoolConfig(seed=7)).to_json()
    other = simulate(trace, make_policy("swell"), PoolConfig(seed=8)).to_json()
    assert one == two
    assert one["starting_gpu_hours"] != other["starting_gpu_hours"]  # start jitter follows the seed


def test_high_priority_jumps_the_queue() -> None:
    trace = synthetic([0, 1, 2, 3], [100, 10, 10, 10], priority=[1, 2, 1, 0])
    report = simulate(trace, make_policy("static", replicas=1), PoolConfig(gpu_start_seconds=0, model_gb=0))
    waits = report.series.wait  # type: ignore[union-attr]
    assert waits[3] < waits[2] < waits[1]  # high, then normal, then low (all queued behind job 0)


def test_a_checkpoint_seen_before_loads_from_host_memory() -> None:
    trace = synthetic([0, 100, 200], [10, 10, 10], ["a", "b", "a"])
    report = simulate(trace, make_policy("static", replicas=1), PoolConfig(gpu_start_seconds=0))
    assert report.model_loads == {"host": 1, "disk": 0, "remote": 2}


def test_pool_cap_and_speed() -> None:
    trace = synthetic(np.arange(50) * 1.0, np.full(50, 30.0))
    capped = simulate(trace, make_policy("queue-length", target=1), PoolConfig(max_gpus=3))
    assert capped.peak_gpus <= 3
    assert capped.demand_over_ready_s > 0
    assert trace.scaled(2.0).span == pytest.approx(trace.span / 2)
    with pytest.raises(ValidationError):
        trace.scaled(0)
    with pytest.raises(ValidationError) as err:
        PoolConfig(remote_gbps=0)
    assert err.value.field == "remote_gbps"


def test_batching_slots_serve_llm_requests_together() -> None:
    trace = synthetic(np.zeros(8), np.full(8, 10.0), slots=4)
    pool = PoolConfig(gpu_start_seconds=0, model_gb=0, init_seconds=0)
    report = simulate(trace, make_policy("static", replicas=1), pool)
    assert sorted(report.series.wait) == pytest.approx([0, 0, 0, 0, 10, 10, 10, 10], abs=1e-6)  # type: ignore[union-attr]


def test_the_live_guardrail_stack_runs_in_the_simulator() -> None:
    """`guarded` is what `LiveLoop` runs per service; the simulator replays it unchanged."""
    trace = bursty(seed=4)
    stack = guarded(make_policy("swell"), make_policy("concurrency"), max_changes=2, low=1, high=4)
    report = simulate(trace, stack, PoolConfig(gpu_start_seconds=60))
    assert report.policy == "swell" and report.peak_gpus <= 4
    assert report.series is not None and report.series.replicas.min() >= 1  # never below min
    again = simulate(trace, stack, PoolConfig(gpu_start_seconds=60))
    assert again.to_json() == report.to_json()


def test_sweeps_run_the_guarded_stack_by_default_and_the_bare_policy_on_request() -> None:
    """A static pool of one on a bursty trace misses the SLO: guarded, the reactive fall-back adds
    replicas as it would live; bare, the pool stays at one."""
    trace = bursty(seed=5)
    pool = PoolConfig(gpu_start_seconds=60)
    guarded_run = simulate(trace, make_policy("static", replicas=1), pool)
    bare = simulate(trace, make_policy("static", replicas=1), replace(pool, guardrails=False))
    assert bare.peak_gpus == 1 and guarded_run.peak_gpus > 1
    assert guarded_run.slo_attainment > bare.slo_attainment
    floor = simulate(trace, make_policy("static", replicas=0), replace(pool, min_replicas=2))
    assert floor.series is not None and floor.series.replicas[1:].min() >= 2
    with pytest.raises(ValidationError) as err:
        PoolConfig(slo_target=0)
    assert err.value.field == "slo_target"


def test_placement_decides_and_the_simulator_carries_it_out() -> None:
    """Two checkpoints, one replica: the idle replica swaps to the queued one (a load per switch),
    and the warm host set makes the switch back a host-memory load."""
    trace = synthetic([0, 200, 400], [10, 10, 10], ["a", "b", "a"])
    pool = PoolConfig(gpu_start_seconds=0, guardrails=False)
    report = simulate(trace, make_policy("static", replicas=1), pool)
    assert report.model_loads == {"host": 1, "disk": 0, "remote": 2}
    assert report.max_wait_s == pytest.approx(pool.load_seconds(Tier.REMOTE), abs=1e-6)
