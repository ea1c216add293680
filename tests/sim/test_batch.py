"""The batch class in the simulator: idle capacity only, handed back in seconds, interactive untouched."""

from __future__ import annotations

import numpy as np
import pytest

from swell.brain.policies import make_policy
from swell.core.clock import ManualClock
from swell.core.errors import ValidationError
from swell.core.jobs import JobSpec, Priority
from swell.queue.base import QueueBackend
from swell.sim.cluster import PoolConfig
from swell.sim.engine import Simulator
from swell.sim.trace import Trace, synthetic
from tests.queue import conftest as queues


def valleys(seed: int = 4) -> Trace:
    """Bursts of jobs for three checkpoints with quiet hours between them."""
    rng = np.random.default_rng(seed)
    starts = np.arange(6) * 7_200.0
    arrival = np.sort(np.concatenate([s + rng.exponential(15, size=40).cumsum() for s in starts]))
    models = [f"m{k}" for k in rng.integers(0, 3, size=len(arrival))]
    return synthetic(arrival, rng.uniform(5, 40, size=len(arrival)), models)


def run(trace: Trace, policy: str = "swell", **pool: float) -> Simulator:
    sim = Simulator(trace, make_policy(policy), PoolConfig(**pool))  # type: ignore[arg-type]
    sim.run()
    return sim


@pytest.mark.parametrize("policy", ["swell", "queue-length"])
def test_with_an_instant_hand_back_interactive_work_is_untouched(policy: str) -> None:
    """Placement and the policy never see batch work: only the hand-back delay could change them."""
    trace = valleys()
    alone = Simulator(trace, make_policy(policy), PoolConfig())
    plain = alone.run()
    sim = Simulator(trace, make_policy(policy), PoolConfig(batch_gpu_hours=100, handback_seconds=0))
    filled = sim.run()
    assert filled.series is not None and plain.series is not None
    assert np.array_equal(filled.series.wait, plain.series.wait)
    assert filled.gpu_hours == plain.gpu_hours and filled.scale_actions == plain.scale_actions
    assert sim.batch_done_s > 0 and sim.handbacks > 0
    idle_s = (plain.gpu_hours - plain.work_gpu_hours) * 3600
    assert sim.batch_done_s + sim.batch_lost_s <= idle_s  # it only ever ran on idle capacity


def test_a_finite_backlog_is_absorbed_whole_and_never_more() -> None:
    sim = run(valleys(), "static", batch_gpu_hours=0.5, batch_chunk_seconds=30)
    assert sim.batch_done_s == pytest.approx(0.5 * 3600)
    assert sim.batch_left == 0 and sim.batch_running == 0


def test_an_interactive_job_waits_only_the_hand_back() -> None:
    """One replica, busy with batch work since its first job finished: the next job waits 2 s."""
    trace = synthetic([0.0, 5_000.0], [10.0, 10.0])
    pool = PoolConfig(batch_gpu_hours=10, start_jitter=0, guardrails=False, handback_seconds=2.0)
    sim = Simulator(trace, make_policy("static", replicas=1), pool)
    report = sim.run()
    assert report.series is not None
    assert report.series.wait[1] == pytest.approx(2.0)
    assert sim.handbacks == 1
    lost = sim.batch_lost_s
    assert 0 < lost < pool.batch_chunk_seconds  # the chunk in flight is lost ...
    done_at_5000 = sim.batch_done_s
    assert done_at_5000 == pytest.approx(
        pool.batch_chunk_seconds * ((5_000.0 - 125.0) // pool.batch_chunk_seconds)
    )  # ... the others it finished count


def test_no_batch_work_starts_while_interactive_jobs_wait() -> None:
    trace = synthetic(np.arange(50) * 1.0, np.full(50, 30.0))  # a backlog the pool works through
    pool = PoolConfig(batch_gpu_hours=10, guardrails=False)
    sim = Simulator(trace, make_policy("static", replicas=2), pool)
    started: list[float] = []
    batch = sim._batch

    def spy(r, now):  # type: ignore[no-untyped-def]
        before = sim.batch_running
        batch(r, now)
        if sim.batch_running > before:
            assert sim.queued == 0
            started.append(now)

    sim._batch = spy  # type: ignore[method-assign]
    sim.run()
    assert started and min(started) >= 30.0 * 25  # only after the queue drained


def test_batch_work_on_a_share_runs_at_the_share_speed() -> None:
    trace = synthetic([0.0, 20_000.0], [10.0, 10.0])
    pool = dict(batch_gpu_hours=0.25, start_jitter=0, guardrails=False)
    whole = Simulator(trace, make_policy("static", replicas=1), PoolConfig(**pool))  # type: ignore[arg-type]
    whole.run()
    shared = Simulator(trace, make_policy("static", replicas=1), PoolConfig(gpu_shares=3, **pool))  # type: ignore[arg-type]
    shared.run()
    assert whole.batch_done_s == shared.batch_done_s == pytest.approx(900)
    assert max(shared.batch_samples) == max(whole.batch_samples) == 1
    # the same 900 s of work: 900 s of a whole GPU, 900 / 0.378 s of a share
    assert sum(shared.batch_samples) == pytest.approx(sum(whole.batch_samples) * 3 * 0.881, rel=0.02)


@pytest.mark.parametrize(
    ("knobs", "field"),
    [
        ({"batch_gpu_hours": -1}, "batch_gpu_hours"),
        ({"handback_seconds": -1}, "handback_seconds"),
        ({"batch_chunk_seconds": 0}, "batch_chunk_seconds"),
    ],
)
def test_bad_batch_settings_name_the_field(knobs: dict[str, float], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        PoolConfig(**knobs)  # type: ignore[arg-type]
    assert err.value.field == field


# -- live: the queue's lease order, through the queue contract (every backend) ----------------------


# the queue contract's fixtures: each test below runs on memory, SQLite and Redis
backend_name, clock, open_queue, queue = queues.backend_name, queues.clock, queues.open_queue, queues.queue
POLICY = queues.POLICY


def submit(q: QueueBackend, **fields: object) -> str:
    job, _ = q.submit(JobSpec(service="svc", input={"n": 1}, **fields))  # type: ignore[arg-type]
    return job.id


def leased(q: QueueBackend, **kwargs: object) -> list[str]:
    return [j.id for j in q.lease("svc", "w1", **kwargs)]  # type: ignore[arg-type]


def test_batch_jobs_go_after_every_interactive_one_however_long_they_waited(
    queue: QueueBackend, clock: ManualClock
) -> None:
    batch = submit(queue, priority=Priority.BATCH)
    clock.advance(10 * POLICY.aging_seconds)  # aging lifts a low job, never a batch one
    low = submit(queue, priority=Priority.LOW)
    normal = submit(queue)
    assert leased(queue, max_jobs=1) == [normal]
    assert leased(queue, max_jobs=1) == [low]
    assert leased(queue, max_jobs=1) == [batch]


def test_a_held_models_batch_job_waits_while_an_interactive_job_of_another_waits(
    queue: QueueBackend, clock: ManualClock
) -> None:
    batch_x = submit(queue, model="x", priority=Priority.BATCH)
    clock.advance(1)
    y = submit(queue, model="y")
    # the worker holds x: its batch job is not taken while y's interactive job waits
    assert leased(queue, max_jobs=1, models=["x"], starve_after=3600.0) == [y]
    assert leased(queue, max_jobs=1, models=["x"], starve_after=3600.0) == [batch_x]
    x = submit(queue, model="x")
    batch_x2 = submit(queue, model="x", priority=Priority.BATCH)
    assert leased(queue, max_jobs=2, models=["x"]) == [x, batch_x2]  # held interactive first


def test_interactive_waiting_sees_interactive_jobs_only(queue: QueueBackend, clock: ManualClock) -> None:
    assert not queue.interactive_waiting("svc")
    submit(queue, model="x", priority=Priority.BATCH)
    assert not queue.interactive_waiting("svc") and not queue.interactive_waiting("svc", ["x"])
    submit(queue, model="y", priority=Priority.LOW)
    assert queue.interactive_waiting("svc") and queue.interactive_waiting("svc", ["y"])
    assert not queue.interactive_waiting("svc", ["x"])  # y's job is not for a model it holds
    assert not queue.interactive_waiting("other")
    leased(queue, max_jobs=1, models=["y"])
    assert not queue.interactive_waiting("svc")  # leased: no longer waiting
