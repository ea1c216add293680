"""The discrete-event simulator: a GPU pool on virtual time, driven by a trace and a policy.

Events (a heap of replica events plus the sorted arrivals and a fixed tick) happen in this order at
one instant: a job finishes, a load finishes, a GPU comes up, a job arrives, the policy ticks. The
serving path is modelled as Swell's workers behave: per-checkpoint queues ranked by arrival shifted
by priority (`RetryPolicy.rank`); a free replica takes jobs for the checkpoint it holds first, and an
idle replica swaps to a queued checkpoint no free replica holds. Loading costs `init_seconds` plus
the checkpoint's size over the bandwidth of the tier it comes from (host memory, local disk, store).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any

import numpy as np

from swell.brain.context import Arrival, Context, ModelLoad, Plan, Policy
from swell.brain.forecast import WorkRate
from swell.core.jobs import Priority, RetryPolicy
from swell.sim.cluster import PoolConfig, Replica, State, Tier
from swell.sim.report import Report, Series, summarize_waits
from swell.sim.trace import Trace

DONE, LOADED, UP = 0, 1, 2
PRIORITIES = (Priority.HIGH, Priority.NORMAL, Priority.LOW)


class Simulator:
    def __init__(
        self, trace: Trace, policy: Policy, pool: PoolConfig | None = None, *, knob: str = "-"
    ) -> None:
        self.trace, self.policy, self.pool, self.knob = trace, policy, pool or PoolConfig(), knob
        self.rng = np.random.default_rng(self.pool.seed)
        n, m = len(trace), len(trace.models)
        ranks = RetryPolicy()
        self.rank = np.array(
            [ranks.rank(float(a), PRIORITIES[p]) for a, p in zip(trace.arrival, trace.priority, strict=True)]
        )
        self.queues: list[list[tuple[float, int]]] = [[] for _ in range(m)]
        self.q_work = np.zeros(m)
        self.running = np.zeros(m, dtype=np.int64)
        self.loading_for = np.zeros(m, dtype=np.int64)
        # ready replicas per checkpoint, by id: insertion-ordered, so runs repeat exactly
        self.by_model: list[dict[int, Replica]] = [{} for _ in range(m)]
        self.est = np.zeros(n)
        self.waits = np.full(n, np.nan)
        self.replicas: dict[int, Replica] = {}
        self.events: list[tuple[float, int, int, int, int]] = []
        self.rate = WorkRate(prior=0.7 if trace.kind == "image" else 1.0)
        self.plan = Plan(0)
        self.warm: tuple[str, ...] = ()  # the warm set nodes were last told to fetch
        self.recent: deque[tuple[float, bool]] = deque()
        self.arrived: dict[int, float] = {}  # estimated work per checkpoint since the last tick
        self.arrivals = 0  # jobs since the last tick
        self.ends: dict[int, float] = {}
        self.queued = self.in_flight = self.ready = self.next_id = self.seq = 0
        self.gpu_s = self.starting_s = self.loading_s = self.over_s = 0.0
        self.loads = {tier.name.lower(): 0 for tier in Tier}
        self.actions = self.peak = 0
        self.samples: list[tuple[float, int, int, int]] = []
        self.wants_future = hasattr(policy, "lookahead")

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> Report:
        trace, pool = self.trace, self.pool
        state = self.policy.initial()
        i, n, now, tick, last = 0, len(trace), 0.0, 0.0, 0.0
        arrival = trace.arrival
        while i < n or self.queued or self.in_flight:
            t_arr = arrival[i] if i < n else math.inf
            t_ev = self.events[0][0] if self.events else math.inf
            now = min(t_arr, t_ev, tick)
            self._account(last, now)
            last = now
            if t_ev == now:
                self._event(now, *heapq.heappop(self.events)[1:])
            elif t_arr == now:
                self._arrive(i, now)
                i += 1
            else:
                state = self._tick(now, state)
                tick = now + pool.tick_seconds
            self._dispatch(now)
        for r in list(self.replicas.values()):
            self._release(r, now)
        return self._report(now)

    def _account(self, last: float, now: float) -> None:
        if self.queued + self.in_flight > self.ready * self.trace.slots:
            self.over_s += now - last

    def _push(self, t: float, kind: int, a: int, b: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, kind, self.seq, a, b))

    def _event(self, now: float, kind: int, _seq: int, a: int, b: int) -> None:
        if kind == DONE:
            self._done(now, a, b)
            return
        r = self.replicas.get(a)
        if r is None or r.version != b:
            return
        if kind == UP:
            self._up(r, now)
        else:
            self._loaded(r, now)

    # -- jobs -------------------------------------------------------------------------------------

    def _arrive(self, i: int, now: float) -> None:
        m = int(self.trace.model[i])
        self.est[i] = self.rate.estimate(float(self.trace.units[i]))
        heapq.heappush(self.queues[m], (float(self.rank[i]), i))
        self.q_work[m] += self.est[i]
        self.queued += 1
        self.arrived[m] = self.arrived.get(m, 0.0) + self.est[i]
        self.arrivals += 1

    def _start(self, r: Replica, m: int, now: float) -> None:
        _, i = heapq.heappop(self.queues[m])
        self.q_work[m] = max(0.0, self.q_work[m] - self.est[i])
        self.queued -= 1
        self.in_flight += 1
        self.running[m] += 1
        r.busy += 1
        wait = now - float(self.trace.arrival[i])
        self.waits[i] = wait
        self.recent.append((now, wait <= self.pool.slo_wait + 1e-9))
        end = now + float(self.trace.service[i])
        if self.wants_future:
            self.ends[i] = end
        self._push(end, DONE, r.id, i)

    def _done(self, now: float, rid: int, i: int) -> None:
        m = int(self.trace.model[i])
        self.in_flight -= 1
        self.running[m] -= 1
        self.ends.pop(i, None)
        self.rate = self.rate.observe(float(self.trace.service[i]), float(self.trace.units[i]))
        r = self.replicas[rid]
        r.busy -= 1
        if r.draining and r.busy == 0:
            self._release(r, now)

    def _dispatch(self, now: float) -> None:
        waiting = [m for m, q in enumerate(self.queues) if q] if self.queued else []
        for m in waiting:
            for r in list(self.by_model[m].values()):
                while r.free and self.queues[m]:
                    self._start(r, m, now)
        for m in sorted((m for m in waiting if self.queues[m]), key=lambda m: self.queues[m][0]):
            if self.loading_for[m] * self.trace.slots >= len(self.queues[m]):
                continue
            spare = self._swap_candidate(m, now)
            if spare is None:
                return
            self._load(spare, m, now)

    def _swap_candidate(self, m: int, now: float) -> Replica | None:
        """The idle replica to load `m`: the fastest tier first (a node keeping it warm), then an
        empty replica, then one whose checkpoint has the most other holders."""
        best: tuple[int, int, int] | None = None
        chosen: Replica | None = None
        for r in self.replicas.values():
            if not r.idle or r.draining or (r.model >= 0 and self.queues[r.model]):
                continue
            key = (int(r.tier(m, now)), r.model >= 0, -len(self.by_model[r.model]) if r.model >= 0 else 0)
            if best is None or key < best:
                best, chosen = key, r
        return chosen

    # -- replicas ---------------------------------------------------------------------------------

    def _acquire(self, now: float) -> None:
        pool = self.pool
        r = Replica(
            self.next_id,
            now,
            self.trace.slots,
            pool.slots(pool.host_cache_gb),
            pool.slots(pool.disk_cache_gb),
        )
        self.next_id += 1
        self.replicas[r.id] = r
        self.peak = max(self.peak, len(self.replicas))
        jitter = pool.start_jitter * (2 * self.rng.random() - 1) if pool.start_jitter else 0.0
        self._push(now + pool.gpu_start_seconds * (1 + jitter), UP, r.id, r.version)

    def _up(self, r: Replica, now: float) -> None:
        self.starting_s += now - r.acquired_at
        r.state = State.READY
        self.ready += 1
        self._prefetch(r, now)
        m = self._wanted_model()
        if m is not None:
            self._load(r, m, now)

    def _wanted_model(self) -> int | None:
        """The checkpoint a fresh replica should load: queued work first, then the plan."""
        queued = [
            m for m, q in enumerate(self.queues) if q and self.loading_for[m] * self.trace.slots < len(q)
        ]
        if queued:
            return max(queued, key=lambda m: self.q_work[m])
        return self._under_planned()

    def _under_planned(self) -> int | None:
        index = self._model_index()
        short = [
            (len(self.by_model[m]) + self.loading_for[m] - want, m)
            for name, want in self.plan.models.items()
            if (m := index.get(name)) is not None and len(self.by_model[m]) + self.loading_for[m] < want
        ]
        return min(short)[1] if short else None

    def _load(self, r: Replica, m: int, now: float) -> None:
        if r.model >= 0 and r.state is State.READY:
            self.by_model[r.model].pop(r.id, None)
        if r.state is State.READY:
            self.ready -= 1
        tier = r.tier(m, now)
        self.loads[tier.name.lower()] += 1
        r.state, r.model, r.load_started = State.LOADING, m, now
        r.version += 1
        self.loading_for[m] += 1
        self._push(now + self.pool.load_seconds(tier), LOADED, r.id, r.version)

    def _loaded(self, r: Replica, now: float) -> None:
        self.loading_s += now - r.load_started
        self.loading_for[r.model] -= 1
        r.state = State.READY
        self.ready += 1
        self.by_model[r.model][r.id] = r
        r.host.put(r.model, now)
        r.disk.put(r.model, now)

    def _prefetch(self, r: Replica, now: float) -> None:
        """Bring the plan's warm checkpoints into the node's host memory, from disk or the store."""
        index = self._model_index()
        for name in self.plan.warm[: r.host.capacity]:
            m = index.get(name)
            if m is None or r.host.has(m, math.inf):
                continue
            gbps = self.pool.disk_gbps if r.disk.has(m, now) else self.pool.remote_gbps
            r.host.put(m, now + self.pool.model_gb / gbps)
            r.disk.put(m, now + self.pool.model_gb / gbps)

    def _release(self, r: Replica, now: float) -> None:
        self.gpu_s += now - r.acquired_at
        if r.state is State.STARTING:
            self.starting_s += now - r.acquired_at
        elif r.state is State.LOADING:
            self.loading_s += now - r.load_started
            self.loading_for[r.model] -= 1
        else:
            self.ready -= 1
            if r.model >= 0:
                self.by_model[r.model].pop(r.id, None)
        r.version += 1
        del self.replicas[r.id]

    # -- the policy -------------------------------------------------------------------------------

    def _tick(self, now: float, state: Any) -> Any:
        ctx = self._context(now)
        plan, state = self.policy.decide(ctx, state)
        self.plan = plan
        self.arrived, self.arrivals = {}, 0
        self._scale(plan.replicas, now)
        if plan.warm and plan.warm != self.warm:  # nodes already up fetch a new warm set
            for r in self.replicas.values():
                if r.state is not State.STARTING:
                    self._prefetch(r, now)
        self.warm = plan.warm
        self.samples.append((now, self.queued + self.in_flight, self.ready, len(self.replicas)))
        return state

    def _context(self, now: float) -> Context:
        names = self.trace.models
        active = (
            set(self.arrived) | {m for m, q in enumerate(self.queues) if q}
            if self.queued
            else set(self.arrived)
        )
        active |= {r.model for r in self.replicas.values() if r.model >= 0}
        active |= {int(m) for m in np.flatnonzero(self.running)} if self.in_flight else set()
        models = {
            names[m]: ModelLoad(
                queued=len(self.queues[m]),
                queued_work=float(self.q_work[m]),
                running=int(self.running[m]),
                replicas=len(self.by_model[m]) + int(self.loading_for[m]),
                arrived_work=self.arrived.get(m, 0.0),
            )
            for m in active
        }
        return Context(
            now=now,
            tick_seconds=self.pool.tick_seconds,
            start_seconds=self.pool.start_seconds,
            slo_wait=self.pool.slo_wait,
            slots=self.trace.slots,
            arrived=self.arrivals,
            arrived_work=sum(self.arrived.values()),
            queued=self.queued,
            queued_work=float(self.q_work.sum()) if self.queued else 0.0,
            running=self.in_flight,
            running_until=tuple(self.ends.values()) if self.wants_future else (),
            replicas=sum(1 for r in self.replicas.values() if not r.draining),
            ready=self.ready,
            models=models,
            attainment=self._attainment(now),
            future=self._future(now) if self.wants_future else (),
        )

    def _attainment(self, now: float) -> float | None:
        """Share of jobs started in the window within the SLO; a queue whose oldest job is already
        late counts as one more miss, so a stuck queue shows up before its jobs start."""
        while self.recent and self.recent[0][0] < now - self.pool.attainment_window:
            self.recent.popleft()
        late = sum(1 for q in self.queues if q and now - self.trace.arrival[q[0][1]] > self.pool.slo_wait)
        total = len(self.recent) + late
        if total == 0:
            return None
        return (sum(ok for _, ok in self.recent)) / total

    def _future(self, now: float) -> tuple[Arrival, ...]:
        lookahead = self.policy.lookahead(self.pool.start_seconds, self.pool.tick_seconds)  # type: ignore[attr-defined]
        a = self.trace.arrival
        lo, hi = np.searchsorted(a, [now, now + lookahead], side="right")
        load = self.pool.load_seconds(Tier.REMOTE) if len(self.trace.models) > 1 else 0.0
        names = self.trace.models
        return tuple(
            Arrival(float(a[j]), float(self.trace.service[j]) + load, names[self.trace.model[j]])
            for j in range(lo, hi)
        )

    def _scale(self, target: int, now: float) -> None:
        if self.pool.max_gpus is not None:
            target = min(target, self.pool.max_gpus)
        active = [r for r in self.replicas.values() if not r.draining]
        if target == len(active):
            return
        self.actions += 1
        if target > len(active):
            self._grow(target - len(active), now)
        else:
            self._shrink(active, len(active) - target, now)

    def _grow(self, count: int, now: float) -> None:
        for r in self.replicas.values():
            if count and r.draining:
                r.draining, count = False, count - 1
        for _ in range(count):
            self._acquire(now)

    def _shrink(self, active: list[Replica], count: int, now: float) -> None:
        """Cancel the newest starts first, then idle replicas holding the least wanted checkpoints,
        then loads; busy replicas drain (they finish their jobs, then stop)."""
        wanted = self._model_index()
        plan = self.plan.models

        def order(r: Replica) -> tuple[int, int, int, float]:
            planned = plan.get(self.trace.models[r.model], 0) if r.model >= 0 and wanted else 0
            rank = {State.STARTING: 0, State.READY: 1, State.LOADING: 2}[r.state]
            return (r.busy > 0, rank, planned, -r.acquired_at)

        for r in sorted(active, key=order)[:count]:
            if r.busy:
                r.draining = True
            else:
                self._release(r, now)

    def _model_index(self) -> dict[str, int]:
        if not hasattr(self, "_index"):
            self._index = {name: m for m, name in enumerate(self.trace.models)}
        return self._index

    # -- the report -------------------------------------------------------------------------------

    def _report(self, end: float) -> Report:
        waits = self.waits
        attainment, p50, p99, worst = summarize_waits(waits, self.pool.slo_wait)
        work_s = float(self.trace.service.sum()) / self.trace.slots
        t, demand, ready, replicas = (
            (np.array(c) for c in zip(*self.samples, strict=True)) if self.samples else (np.zeros(0),) * 4
        )
        return Report(
            policy=self.policy.name,
            knob=self.knob,
            trace=self.trace.name,
            jobs=len(self.trace),
            slo_wait_s=self.pool.slo_wait,
            slo_attainment=attainment,
            p50_wait_s=p50,
            p99_wait_s=p99,
            max_wait_s=worst,
            gpu_hours=self.gpu_s / 3600,
            work_gpu_hours=work_s / 3600,
            starting_gpu_hours=self.starting_s / 3600,
            loading_gpu_hours=self.loading_s / 3600,
            idle_gpu_hours=max(0.0, self.gpu_s - work_s - self.starting_s - self.loading_s) / 3600,
            model_loads=dict(self.loads),
            scale_actions=self.actions,
            peak_gpus=self.peak,
            demand_over_ready_s=self.over_s,
            sim_seconds=end,
            series=Series(t, demand, ready, replicas, self.trace.arrival.copy(), waits.copy()),
        )


def simulate(trace: Trace, policy: Policy, pool: PoolConfig | None = None, *, knob: str = "-") -> Report:
    """Replay `trace` under `policy` on a simulated pool; deterministic for `pool.seed`."""
    return Simulator(trace, policy, pool, knob=knob).run()
