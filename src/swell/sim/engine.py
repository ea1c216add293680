"""The discrete-event simulator: a GPU pool on virtual time, driven by a trace and a policy.

Events (a heap of replica events plus the sorted arrivals and a fixed tick) happen in this order at
one instant: a job finishes, a load finishes, a GPU comes up, a job arrives, the policy ticks. The
serving path is modelled as Swell's workers behave: per-checkpoint queues ranked by arrival shifted
by priority (`RetryPolicy.rank`), and a free replica takes jobs for the checkpoint it holds first
(the worker's affinity lease). Loading costs `init_seconds` plus the checkpoint's size over the
bandwidth of the tier it comes from (host memory, local disk, store).

The brain's parts are the live ones, not copies: what happens is fed to `swell.brain.observe`'s
`Observer`, which builds the policy's `Context`; every placement decision (swaps, a fresh replica's
first checkpoint, warm host sets, which replicas a scale-down releases) is `swell.brain.placement`'s;
and the policy runs inside the guarded stack live runs (`guarded`: SLO fall-back, change-rate
limit, bounds) unless `PoolConfig.guardrails` is off. This module only carries the moves out.

Two options of the pool (docs/brain.md, "Shared GPUs" and "Filling the valleys"): `gpu_shares`
packs replicas several to a GPU (`placement.pack`), each at `share_speed` of a whole GPU, with
GPU-hours counted per physical GPU; `batch_gpu_hours` queues batch work that runs in chunks on
ready replicas no interactive job needs, unseen by the observer and placement, and is handed back
`handback_seconds` after an interactive job needs its replica.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from swell.brain import placement
from swell.brain.context import Arrival, Context, Plan, Policy
from swell.brain.guardrails import Bounded, guarded
from swell.brain.observe import Observer, ReplicaSnapshot, work_prior
from swell.brain.placement import MoveKind, Waiting
from swell.brain.policies import make_policy
from swell.core.jobs import Priority, RetryPolicy
from swell.core.replicas import ReplicaState
from swell.sim.cluster import Gpu, PoolConfig, Replica, State, Tier
from swell.sim.report import Report, Series, summarize_waits
from swell.sim.trace import Trace

DONE, LOADED, UP, BATCH = 0, 1, 2, 3
PRIORITIES = (Priority.HIGH, Priority.NORMAL, Priority.LOW)


class Simulator:
    def __init__(
        self, trace: Trace, policy: Policy, pool: PoolConfig | None = None, *, knob: str = "-"
    ) -> None:
        self.pool = pool or PoolConfig()
        self.trace, self.knob = trace, knob
        self.oracle = policy if hasattr(policy, "lookahead") else None  # clairvoyant: shown the future
        self.policy = guard(policy, self.pool)
        self.rng = np.random.default_rng(self.pool.seed)
        n, m = len(trace), len(trace.models)
        ranks = RetryPolicy()
        self.rank = np.array(
            [ranks.rank(float(a), PRIORITIES[p]) for a, p in zip(trace.arrival, trace.priority, strict=True)]
        )
        self.queues: list[list[tuple[float, int]]] = [[] for _ in range(m)]
        self.q_work = np.zeros(m)  # estimated work queued per checkpoint (the Observer's estimates)
        self.loading_for = np.zeros(m, dtype=np.int64)
        # ready replicas per checkpoint, by id: insertion-ordered, so runs repeat exactly
        self.by_model: list[dict[int, Replica]] = [{} for _ in range(m)]
        self.holders = _Holders(self.by_model)
        self.est = np.zeros(n)
        self.waits = np.full(n, np.nan)
        self.replicas: dict[int, Replica] = {}
        self.events: list[tuple[float, int, int, int, int]] = []
        self.wants_future = self.oracle is not None
        self.observer = Observer(
            tick_seconds=self.pool.tick_seconds,
            start_seconds=self.pool.start_seconds,
            slo_wait=self.pool.slo_wait,
            slots=trace.slots,
            window=self.pool.attainment_window,
            prior=work_prior(trace.kind) if self.pool.work_prior is None else self.pool.work_prior,
            track_ends=self.wants_future,
        )
        self.plan = Plan(0)
        self.planned: dict[int, int] = {}  # the plan's replicas per checkpoint, by index
        self.warm: tuple[str, ...] = ()  # the warm set nodes were last told to fetch
        self.queued = self.in_flight = self.ready = self.next_id = self.seq = 0
        self.gpu_s = self.starting_s = self.loading_s = self.over_s = 0.0
        self.loads = {tier.name.lower(): 0 for tier in Tier}
        self.actions = self.peak = 0
        self.samples: list[tuple[float, int, int, int]] = []
        # shared GPUs (`PoolConfig.gpu_shares`): replicas are shares of the GPUs here, GPU-hours
        # count GPUs; unshared, every replica has a GPU of its own
        self.gpus: dict[int, Gpu] = {}
        self.next_gpu = 0
        self.speed = self.pool.share_speed
        self.share = 1.0 / self.pool.gpu_shares
        # the batch class (`PoolConfig.batch_gpu_hours`): whole-GPU seconds left, done, lost
        self.batch_left = self.pool.batch_gpu_hours * 3600
        self.batch_done_s = self.batch_lost_s = 0.0
        self.handbacks = self.batch_running = 0
        self.batch_samples: list[int] = []  # replicas running batch work, per tick

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
            if r.batch_work:  # the replay ends here: a chunk in flight is neither done nor lost
                r.batch_work, self.batch_running = 0.0, self.batch_running - 1
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
        if kind == BATCH:
            if r is not None and r.batch_seq == b:
                self._batch_done(r, now)
            return
        if r is None or r.version != b:
            return
        if kind == UP:
            self._up(r, now)
        else:
            self._loaded(r, now)

    # -- jobs -------------------------------------------------------------------------------------

    def _arrive(self, i: int, now: float) -> None:
        m = int(self.trace.model[i])
        self.est[i] = self.observer.arrive(i, now, float(self.trace.units[i]), self.trace.models[m])
        heapq.heappush(self.queues[m], (float(self.rank[i]), i))
        self.q_work[m] += self.est[i]
        self.queued += 1

    def _start(self, r: Replica, m: int, now: float) -> None:
        _, i = heapq.heappop(self.queues[m])
        self.q_work[m] = max(0.0, self.q_work[m] - self.est[i])
        self.queued -= 1
        self.in_flight += 1
        r.busy += 1
        self._hand_back(r, now)  # the batch chunk it runs, if any, stops first
        self._spare(m, now)
        now = max(now, r.free_at)
        self.waits[i] = now - float(self.trace.arrival[i])
        end = now + float(self.trace.service[i]) / self.speed
        self.observer.start(i, now, end if self.wants_future else None)
        self._push(end, DONE, r.id, i)

    def _done(self, now: float, rid: int, i: int) -> None:
        self.in_flight -= 1
        took = float(self.trace.service[i]) / self.speed
        self.observer.finish(i, now, took, float(self.trace.units[i]))
        r = self.replicas[rid]
        r.busy -= 1
        if r.draining and r.busy == 0:
            self._release(r, now)
        elif r.busy == 0:
            self._batch(r, now)

    def _dispatch(self, now: float) -> None:
        waiting = [m for m, q in enumerate(self.queues) if q] if self.queued else []
        for m in waiting:
            for r in list(self.by_model[m].values()):
                while r.free and self.queues[m]:
                    self._start(r, m, now)
        left = self._waiting(m for m in waiting if self.queues[m])
        if not any(w.loading * self.trace.slots < w.queued for w in left):
            return
        for move in placement.swaps(
            self.replicas.values(), left, self.holders, slots=self.trace.slots, now=now
        ):
            self._load(self.replicas[move.replica], move.model, now)  # type: ignore[arg-type, index]

    def _waiting(self, models: Any) -> list[Waiting]:
        """Checkpoints with queued jobs as placement reads them, by index (the order of `models`)."""
        return [
            Waiting(
                m, len(self.queues[m]), float(self.q_work[m]), self.queues[m][0], int(self.loading_for[m])
            )
            for m in models
        ]

    # -- replicas ---------------------------------------------------------------------------------

    def _acquire(self, now: float) -> None:
        pool = self.pool
        host, disk = pool.slots(pool.host_cache_gb), pool.slots(pool.disk_cache_gb)
        r = Replica(self.next_id, now, self.trace.slots, host, disk)
        self.next_id += 1
        self.replicas[r.id] = r
        gpu = self._gpu_for(now, host, disk)
        gpu.shares.add(r.id)
        r.gpu, r.host, r.disk = gpu.id, gpu.host, gpu.disk
        self.peak = max(self.peak, len(self.gpus))
        self._push(max(now, gpu.up_at), UP, r.id, r.version)

    def _gpu_for(self, now: float, host: int, disk: int) -> Gpu:
        """`placement.pack`: the GPU with a free share that is most full (up ones first), else a
        new one (it comes up after `gpu_start_seconds`, +- the seeded jitter)."""
        pool = self.pool
        best = placement.pack(
            ((g.id, len(g.shares), g.up_at <= now) for g in self.gpus.values()), pool.gpu_shares
        )
        if best is not None:
            return self.gpus[best]  # type: ignore[index]
        jitter = pool.start_jitter * (2 * self.rng.random() - 1) if pool.start_jitter else 0.0
        gpu = Gpu(self.next_gpu, now, now + pool.gpu_start_seconds * (1 + jitter), host, disk)
        self.next_gpu += 1
        self.gpus[gpu.id] = gpu
        return gpu

    def _up(self, r: Replica, now: float) -> None:
        self.starting_s += (now - r.acquired_at) * self.share
        r.state = State.READY
        self.ready += 1
        self._prefetch(r, now)
        m = self._wanted_model()
        if m is not None:
            self._load(r, m, now)

    def _wanted_model(self) -> int | None:
        """The checkpoint a fresh replica should load (`placement.first_model`)."""
        waiting = self._waiting(m for m, q in enumerate(self.queues) if q) if self.queued else []
        model = placement.first_model(
            waiting,
            self.planned,
            lambda m: len(self.by_model[m]) + int(self.loading_for[m]),
            slots=self.trace.slots,
        )
        return None if model is None else int(model)  # type: ignore[call-overload]

    def _load(self, r: Replica, m: int, now: float) -> None:
        if r.model is not None and r.state is State.READY:
            self.by_model[r.model].pop(r.id, None)
        if r.state is State.READY:
            self.ready -= 1
        self._hand_back(r, now)
        now = max(now, r.free_at)
        tier = r.tier(m, now)
        self.loads[tier.name.lower()] += 1
        r.state, r.model, r.load_started = State.LOADING, m, now
        r.version += 1
        self.loading_for[m] += 1
        self._push(now + self.pool.load_seconds(tier), LOADED, r.id, r.version)

    def _loaded(self, r: Replica, now: float) -> None:
        assert r.model is not None
        self.loading_s += (now - r.load_started) * self.share
        self.loading_for[r.model] -= 1
        r.state = State.READY
        self.ready += 1
        self.by_model[r.model][r.id] = r
        r.host.put(r.model, now)
        r.disk.put(r.model, now)
        self._batch(r, now)

    def _prefetch(self, r: Replica, now: float) -> None:
        """Bring the plan's warm checkpoints into the node's host memory (`placement.warm`), from
        disk or the store."""
        index = self._model_index()
        known = [index[name] for name in self.plan.warm if name in index]
        move = placement.warm(r.id, known, r.host.capacity, lambda m: r.host.has(m, math.inf))
        for m in move.models if move else ():
            assert isinstance(m, int)
            if r.host.has(m, math.inf):
                continue
            gbps = self.pool.disk_gbps if r.disk.has(m, now) else self.pool.remote_gbps
            r.host.put(m, now + self.pool.model_gb / gbps)
            r.disk.put(m, now + self.pool.model_gb / gbps)

    def _release(self, r: Replica, now: float) -> None:
        self._hand_back(r, now)
        gpu = self.gpus[r.gpu]
        gpu.shares.discard(r.id)
        if not gpu.shares:  # the GPU goes with its last share
            self.gpu_s += now - gpu.acquired_at
            del self.gpus[gpu.id]
        if r.state is State.STARTING:
            self.starting_s += (now - r.acquired_at) * self.share
        elif r.state is State.LOADING:
            self.loading_s += (now - r.load_started) * self.share
            self.loading_for[r.model] -= 1
        else:
            self.ready -= 1
            if r.model is not None:
                self.by_model[r.model].pop(r.id, None)
        r.version += 1
        del self.replicas[r.id]

    # -- the policy -------------------------------------------------------------------------------

    def _tick(self, now: float, state: Any) -> Any:
        ctx = self._context(now)
        plan, state = self.policy.decide(ctx, state)
        if self.share != 1.0 and plan.gpu_share == 1.0:  # on shared GPUs its replicas are shares
            plan = replace(plan, gpu_share=self.share)
        self.plan = plan
        index = self._model_index()
        self.planned = {index[name]: n for name, n in plan.models.items() if name in index}
        self._scale(plan.replicas, now)
        if placement.rewarm(self.warm, plan.warm):  # nodes already up fetch a new warm set
            for r in self.replicas.values():
                if r.state is not State.STARTING:
                    self._prefetch(r, now)
        self.warm = plan.warm
        self.samples.append((now, self.queued + self.in_flight, self.ready, len(self.replicas)))
        if self.batch_left > 0 and not self.queued:  # idle replicas no event woke take batch work
            for r in self.replicas.values():
                self._batch(r, now)
        self.batch_samples.append(self.batch_running)
        return state

    def _context(self, now: float) -> Context:
        self.observer.replicas(self._snapshot(r) for r in self.replicas.values())
        return self.observer.context(now, future=self._future(now) if self.wants_future else ())

    def _snapshot(self, r: Replica) -> ReplicaSnapshot:
        if r.draining:
            state = ReplicaState.DRAINING
        elif r.state is State.READY:
            state = ReplicaState.BUSY if r.busy else ReplicaState.READY
        else:
            state = ReplicaState.STARTING if r.state is State.STARTING else ReplicaState.LOADING
        models = () if r.model is None else (self.trace.models[r.model],)
        return ReplicaSnapshot(r.id, models=models, state=state, busy=r.busy)

    def _future(self, now: float) -> tuple[Arrival, ...]:
        lookahead = self.oracle.lookahead(self.pool.start_seconds, self.pool.tick_seconds)  # type: ignore[union-attr]
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
                self._batch(r, now)
        for _ in range(count):
            self._acquire(now)

    def _shrink(self, active: list[Replica], count: int, now: float) -> None:
        """`placement.release`: evict what runs nothing, drain what is busy."""
        gpus = self.gpus
        packed = (lambda r: len(gpus[r.gpu].shares)) if self.pool.gpu_shares > 1 else None
        for move in placement.release(active, count, self.planned, packed=packed):  # type: ignore[arg-type]
            r = self.replicas[move.replica]  # type: ignore[index]
            if move.kind is MoveKind.DRAIN:
                r.draining = True
            else:
                self._release(r, now)

    # -- the batch class --------------------------------------------------------------------------

    def _batch(self, r: Replica, now: float) -> None:
        """Start a batch chunk on `r` if it is ready, holds a checkpoint, runs nothing, is not
        going away and no interactive job waits (for its checkpoint or, to be swapped to, another):
        capacity interactive work leaves idle. Placement and the policy never see it (`busy` counts
        interactive jobs only), so it changes none of their decisions."""
        if self.batch_left <= 0 or r.batch_work or r.busy or r.draining or r.state is not State.READY:
            return
        if r.model is None or self.queued:
            return
        work = min(self.pool.batch_chunk_seconds, self.batch_left)
        self.batch_left -= work
        r.batch_work, r.batch_at = work, now
        self.batch_running += 1
        self._push(now + work / self.speed, BATCH, r.id, r.batch_seq)

    def _batch_done(self, r: Replica, now: float) -> None:
        self.batch_done_s += r.batch_work
        r.batch_work = 0.0
        self.batch_running -= 1
        self._batch(r, now)

    def _hand_back(self, r: Replica, now: float) -> None:
        """Stop `r`'s batch chunk, if any: it is free for interactive work `handback_seconds` later
        (`free_at`); the chunk's work so far is lost and the chunk queued again."""
        if not r.batch_work:
            return
        self.batch_lost_s += (now - r.batch_at) * self.speed
        self.batch_left += r.batch_work
        r.batch_work = 0.0
        r.batch_seq += 1
        r.free_at = now + self.pool.handback_seconds
        self.batch_running -= 1
        self.handbacks += 1

    def _spare(self, m: int, now: float) -> None:
        """Interactive demand for checkpoint `m` rises: when no holder of `m` is left free of batch
        work, hand one back now (the latest chunk started: the least work lost), so the next job
        for `m` finds it free instead of waiting for the hand-back."""
        if not self.batch_running:
            return
        spare: Replica | None = None
        for r in self.by_model[m].values():
            if r.free and not r.batch_work:
                return
            if r.batch_work and (spare is None or r.batch_at > spare.batch_at):
                spare = r
        if spare is not None:
            self._hand_back(spare, now)

    def _model_index(self) -> dict[str, int]:
        if not hasattr(self, "_index"):
            self._index = {name: m for m, name in enumerate(self.trace.models)}
        return self._index

    # -- the report -------------------------------------------------------------------------------

    def _report(self, end: float) -> Report:
        waits = self.waits
        attainment, p50, p99, worst = summarize_waits(waits, self.pool.slo_wait)
        # GPU-seconds of work: on a share, each job takes service / speed of 1 / gpu_shares of a GPU
        work_s = float(self.trace.service.sum()) / self.trace.slots / self.speed * self.share
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


class _Holders(Mapping[int, int]):
    """Ready replicas per checkpoint index, read through (placement's `holders`)."""

    def __init__(self, by_model: list[dict[int, Replica]]) -> None:
        self.by_model = by_model

    def __getitem__(self, m: int) -> int:
        return len(self.by_model[m])

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.by_model)))

    def __len__(self) -> int:
        return len(self.by_model)


def guard(policy: Policy, pool: PoolConfig) -> Policy:
    """`policy` inside the stack live runs (`guarded`) with the pool's settings, unless
    `pool.guardrails` is off or it is guarded already."""
    if not pool.guardrails or isinstance(policy, Bounded):
        return policy
    return guarded(
        policy,
        make_policy(pool.reactive_policy),
        target=pool.slo_target,
        max_changes=pool.max_changes_per_minute,
        low=pool.min_replicas,
        high=pool.max_gpus,
    )


def simulate(trace: Trace, policy: Policy, pool: PoolConfig | None = None, *, knob: str = "-") -> Report:
    """Replay `trace` under `policy` (in the guarded stack unless `pool.guardrails` is off) on a
    simulated pool; deterministic for `pool.seed`."""
    return Simulator(trace, policy, pool, knob=knob).run()
