"""A slice of the production image trace replayed live and in the simulator: the same decisions.

Live is what `swell up` wires together, in one process: the gateway under a real uvicorn on a
loopback port (jobs are submitted over HTTP at their trace times), a SQLite queue file, the local
cluster's worker processes running the callable engine (each job sleeps its trace time), and the
brain ticking in a thread. The simulator replays the same jobs under the very policy object the live
loop runs (its guarded stack: SLO fall-back, change-rate limit, replicas.min..max), on a pool whose
replica start time is the one measured live.

Time is scaled: one trace minute is one second (`SPEED`), the policy's knobs with it. What is
compared are decisions: the replicas planned and the checkpoints placed, per window of `WINDOW`
seconds. The simulator replays the jobs as they arrived and ran live (on a busy machine a job's
sleep stretches, and a policy that weighs work must see the same work). Tolerances are on timing
(a busy 2-core machine starts a worker in 0.5-4 s), not on the rules: a window's replicas must be
within one of the other side's in the same or a neighbouring window (two, in at most one window: a
slow start), and on average within half of one; the checkpoints placed must be the same set over
the run, and the same in most windows. The test ends by showing that a different policy (a static
pool) fails the same comparison.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from swell.brain.context import Context, Plan, Policy
from swell.brain.live import LiveLoop
from swell.brain.policies import make_policy
from swell.cluster.local import LocalSupervisor
from swell.core.clock import SystemClock
from swell.core.config import Settings, SwellConfig, parse_config
from swell.core.jobs import JobState
from swell.core.replicas import ReplicaState
from swell.gateway.app import create_app
from swell.queue.base import QueueBackend, open_queue
from swell.sim.cluster import PoolConfig
from swell.sim.engine import simulate
from swell.sim.trace import Trace, read_trace, synthetic
from tests.support import free_port, wait_for

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
IMAGE = DATA / "sd_requests_2024-11-15_to_11-27.csv"
FIRST, COUNT = 2532, 40  # 40 jobs over 18 trace minutes, 4 checkpoints, about 0.7 GPUs of work
SPEED = 60.0  # one trace minute is one second
TICK = 0.25  # the brain's tick (15 trace seconds)
SLO = 0.5  # the SLO wait (30 trace seconds)
WINDOW = 2.0  # decisions are compared per window of this many seconds
KEY = "replay-key"
BRAIN: dict[str, Any] = {
    "mode": "enforce",
    "policy": "swell",
    "options": {"keep_alive": 900 / SPEED, "seasonal": 0},
    "tick_seconds": TICK,
    "slo_wait_seconds": SLO,
    "fallback_window_seconds": 300 / SPEED,
    "reactive_policy": "concurrency",
    "reactive_options": {"up_delay": 30 / SPEED, "down_delay": 600 / SPEED},
    "max_changes_per_minute": 60,
}

pytestmark = pytest.mark.skipif(not IMAGE.exists(), reason="../shared/data is absent")

Decision = tuple[float, int, frozenset[str], str]  # (s from the first arrival, replicas, checkpoints, why)


@dataclass
class Recorded:
    """A policy that notes each decision it makes (the simulator's side of the record)."""

    inner: Policy
    log: list[tuple[float, Plan]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    def initial(self) -> Any:
        return self.inner.initial()

    def decide(self, ctx: Context, state: Any) -> tuple[Plan, Any]:
        plan, state = self.inner.decide(ctx, state)
        self.log.append((ctx.now, plan))
        return plan, state


def trace_slice() -> Trace:
    return read_trace(IMAGE).slice(FIRST, FIRST + COUNT)


def config(start_seconds: float) -> SwellConfig:
    return parse_config({
        "services": [{
            "name": "img", "engine": "callable", "options": {"function": "tests.worker.funcs:sleep"},
            "replicas": {"min": 1, "max": 4}, "lease_seconds": 5.0,
        }],
        "brain": {**BRAIN, "start_seconds": start_seconds},
    })  # fmt: skip


@dataclass
class Live:
    loop: LiveLoop
    queue: QueueBackend
    supervisor: LocalSupervisor
    base: str
    start_seconds: float  # spawn to ready of the first worker, measured
    decisions: list[Decision] = field(default_factory=list)
    t0: float = 0.0  # time.monotonic() at the first arrival
    t0_wall: float = 0.0  # the queue's clock (time.time()) then


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    url = f"sqlite:///{tmp_path / 'swell.db'}"
    clock = SystemClock()
    supervisor = LocalSupervisor(config(2.0), url, tmp_path, clock=clock, hang_seconds=20.0)
    supervisor.start()
    wait_for(lambda: _serving(supervisor) == 1, 60, "the first worker")
    began = time.monotonic()  # a second start, as the brain's will be (the first pays cold imports)
    supervisor.scale("img", 2)
    wait_for(lambda: _serving(supervisor) == 2, 60, "a second worker")
    start_seconds = time.monotonic() - began
    supervisor.scale("img", 1)
    wait_for(lambda: _serving(supervisor) == 1, 60, "the second worker to drain")
    cfg = config(start_seconds)  # the brain is told the start time this machine has
    queue = open_queue(url, clock=clock)
    registry = CollectorRegistry()
    loop = LiveLoop(cfg, queue, supervisor, clock=clock, registry=registry)
    settings = Settings(data_dir=tmp_path, api_key=KEY, queue_url=url)
    app = create_app(
        cfg, settings, queue, replicas=supervisor, registry=registry, extra_services=loop.plan_view
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200, 30, "the gateway")
    yield Live(loop, queue, supervisor, base, start_seconds)
    server.should_exit = True
    thread.join(timeout=10)
    supervisor.stop(timeout=10)
    queue.close()


def _serving(supervisor: LocalSupervisor) -> int:
    return sum(r.state in (ReplicaState.READY, ReplicaState.BUSY) for r in supervisor.replicas())


Ran = tuple[np.ndarray, np.ndarray, list[str]]  # arrivals and run times (s from t0), checkpoints


def run_live(live: Live, trace: Trace) -> tuple[list[Decision], Ran]:
    """Tick the brain as `swell up` does while the jobs are submitted over HTTP at their times;
    the decisions, and the jobs as they ran (arrival, run time, checkpoint)."""
    stop = threading.Event()

    def brain() -> None:
        while not stop.is_set():
            live.loop.tick()
            plan = live.loop.services["img"].plan
            assert plan is not None
            at = time.monotonic() - live.t0
            live.decisions.append((at, plan.replicas, frozenset(plan.models), plan.reason))
            stop.wait(TICK)

    live.t0, live.t0_wall = time.monotonic(), time.time()
    ticker = threading.Thread(target=brain, daemon=True)
    ticker.start()
    ids = submit(live, trace)
    done = lambda: all(j.state is JobState.SUCCEEDED for j in live.queue.get_many(ids))  # noqa: E731
    wait_for(done, 60, "every job to finish")
    time.sleep(WINDOW)  # the brain's decisions after the last job, as the simulator makes them
    stop.set()
    ticker.join(timeout=10)
    view = httpx.get(f"{live.base}/v1/services", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    plan = next(s for s in view.json()["services"] if s["name"] == "img")["plan"]
    assert plan["mode"] == "enforce" and "moves" in plan  # what was done is shown
    jobs = live.queue.get_many(ids)
    arrival = np.array([j.created_at - live.t0_wall for j in jobs])
    ran = np.array([(j.finished_at or 0.0) - (j.started_at or 0.0) for j in jobs])
    return live.decisions, (arrival, ran, [j.model or "" for j in jobs])


def submit(live: Live, trace: Trace) -> list[str]:
    ids = []
    with httpx.Client(base_url=live.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as http:
        for at, seconds, model in zip(trace.arrival, trace.service, trace.model, strict=True):
            delay = live.t0 + at / SPEED - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            body = {"service": "img", "input": {"seconds": seconds / SPEED}, "model": trace.models[model]}
            response = http.post("/v1/jobs", json=body)
            assert response.status_code in (200, 201, 202), response.text
            ids.append(response.json()["id"])
    return ids


def run_sim(policy: Policy, ran: Ran, start_seconds: float) -> list[Decision]:
    """The jobs as they arrived and ran live (a busy machine stretches a job's sleep, and a policy
    that weighs work must see the same work), in the simulator under `policy` (already guarded)."""
    arrival, service, models = ran
    lead = start_seconds + 2 * TICK  # live, the first replica is up before the first job: here too
    scaled = synthetic(arrival + lead, service, models, units=np.ones(len(arrival)))  # callable: 1 unit a job
    pool = PoolConfig(
        gpu_start_seconds=start_seconds,
        start_jitter=0,
        init_seconds=0,
        model_gb=0,
        tick_seconds=TICK,
        slo_wait=SLO,
        attainment_window=300 / SPEED,
        guardrails=False,  # `policy` is the live loop's guarded stack itself
        work_prior=1.0,
    )
    recorded = Recorded(policy)
    simulate(scaled, recorded, pool)
    return [
        (now - lead, plan.replicas, frozenset(plan.models), plan.reason)
        for now, plan in recorded.log
        if now >= lead
    ]


def windows(decisions: list[Decision], end: float) -> list[tuple[int, frozenset[str]]]:
    """Per window: the most replicas planned and every checkpoint placed."""
    out = []
    for k in range(int(np.ceil(end / WINDOW))):
        inside = [d for d in decisions if k * WINDOW <= d[0] < (k + 1) * WINDOW]
        out.append((max((d[1] for d in inside), default=-1), frozenset().union(*(d[2] for d in inside))))
    return out


def divergence(live: list[Decision], sim: list[Decision], end: float) -> list[str]:
    """What differs beyond the stated tolerances (empty: the same decisions)."""
    a, b = windows(live, end), windows(sim, end)
    problems = []
    gaps = [*_gaps(a, b), *_gaps(b, a)]
    for k, gap in gaps:
        if gap > 2:
            problems.append(f"window {k}: {a[k][0]} replicas live, {b[k][0]} simulated")
    slips = sorted({k for k, gap in gaps if gap == 2})
    if len(slips) > 1:  # one slip is timing (a slow start on a busy machine); two are a rule
        problems.append(
            f"windows {slips}: replicas live {[a[k][0] for k in slips]}, simulated {[b[k][0] for k in slips]}"
        )
    mean = float(np.mean([gap for _, gap in gaps])) if gaps else 0.0
    if mean >= 0.5:
        problems.append(f"replicas differ by {mean:.2f} per window on average")
    placed_live = frozenset().union(*(m for _, m in a))
    placed_sim = frozenset().union(*(m for _, m in b))
    if placed_live != placed_sim:
        problems.append(f"checkpoints placed: {sorted(placed_live)} live, {sorted(placed_sim)} simulated")
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x[0] >= 0 and y[0] >= 0]
    same = sum(x[1] == y[1] for x, y in pairs)
    if pairs and same < 0.7 * len(pairs):
        problems.append(f"checkpoints placed agree in {same} of {len(pairs)} windows")
    return problems


def _gaps(a: list[tuple[int, frozenset[str]]], b: list[tuple[int, frozenset[str]]]) -> list[tuple[int, int]]:
    """(window, gap) for each window of `a`: how far its replicas are from `b`'s in the same or a
    neighbouring window (the timing tolerance: a decision may come one window earlier or later)."""
    out = []
    for k, (n, _) in enumerate(a):
        near = [b[j][0] for j in (k - 1, k, k + 1) if 0 <= j < len(b) and b[j][0] >= 0]
        if n >= 0 and near:
            out.append((k, min(abs(n - m) for m in near)))
    return out


def test_a_trace_slice_makes_the_same_decisions_live_and_simulated(live: Live) -> None:
    trace = trace_slice()
    decisions, ran = run_live(live, trace)
    simulated = run_sim(live.loop.services["img"].policy, ran, live.start_seconds)
    end = trace.span / SPEED + WINDOW
    problems = divergence(decisions, simulated, end)
    shown = "\n".join(
        f"{k * WINDOW:4.0f}s live {x} sim {y}"
        for k, (x, y) in enumerate(zip(windows(decisions, end), windows(simulated, end), strict=True))
    )
    print(f"start {live.start_seconds:.2f}s\n{shown}")  # shown by pytest -s, and on a failure
    if problems:
        for (at, n, _, why), side in sorted(
            [(d, "live") for d in decisions] + [(d, "sim") for d in simulated]
        ):
            print(f"{at:6.2f} {side:4} {n} {why}")
    assert not problems, f"{problems}\n{shown}"
    assert max(d[1] for d in decisions) >= 2  # the slice makes the brain scale out: a real test
    assert live.supervisor.statistics().extra["models"]["img"]  # the cluster was told what to hold

    # the same comparison tells a different policy apart: it can fail
    other = run_sim(make_policy("static", replicas=1), ran, live.start_seconds)
    assert divergence(decisions, other, end)
