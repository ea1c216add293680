"""What happened, turned into a policy's `Context` in one place: the brain's observation layer.

Pure (sans-I/O): an `Observer` is fed observations with their times and answers `context(now)`;
it reads no clock, no queue and no cluster. The simulator feeds it from its own events, the live
loop (`swell.brain.live`) from the queue's event cursor and the cluster's `replicas()`, so a policy
sees the same inputs from the same rules in both:

    Arrived(job, at, units, model)     a job was submitted (or seen queued when the loop started)
    Started(job, at, until=None)       a replica took it (the wait is known now)
    Requeued(job, at)                  it went back to the queue (lease lost, handed back, retried)
    Finished(job, at, seconds, units)  it ended; `seconds` is its GPU time, None when it taught nothing
    Dropped(job, at)                   it left without running (cancelled while queued)
    ReplicaSnapshot(id, service, models, state, loading_since)   the pool, as a whole, per tick

The rules, each written once (the two copies of the first version differed in both):

- **Work** is estimated once per job, at arrival, at the rate learned so far (`WorkRate`: GPU-seconds
  per unit from finished jobs). The prior is `work_prior(kind)` seconds per unit (0.7 for image
  engines, whose unit is a step of one 512x512 image; 1.0 otherwise) and weighs as much as
  `PRIOR_JOBS` jobs the size of the first one seen: a few real jobs outweigh it, one outlier does not.
- **SLO attainment** counts a job when it first starts (its queue wait is known then; a job that
  is requeued and starts again is not counted twice), over the last `window` seconds; and every job
  still queued whose wait already exceeds the SLO counts as one more miss, so a stuck queue shows
  before its jobs start. None while nothing counts.
- **Replicas** are the snapshot's: `replicas` those starting, loading, ready or busy (draining ones
  are on their way out), `ready` those ready or busy; a checkpoint's `ModelLoad.replicas` the ones
  among those that hold it or load it.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from swell.brain.context import Arrival, Context, ModelLoad
from swell.brain.forecast import WorkRate
from swell.core.errors import ValidationError
from swell.core.replicas import ReplicaState

PRIOR_JOBS = 10.0  # the work-rate prior weighs as much as this many jobs the size of the first one
COUNTED = frozenset({ReplicaState.STARTING, ReplicaState.LOADING, ReplicaState.READY, ReplicaState.BUSY})
SERVING = frozenset({ReplicaState.READY, ReplicaState.BUSY})
IMAGE_KINDS = frozenset({"image", "diffusers"})


def work_prior(kind: str) -> float:
    """Seconds per unit of work before any job finished: 0.7 per step of a 512x512 image for image
    engines (an SDXL-class step on an A10-class GPU), 1.0 otherwise (one unit is one job, or one
    token-second for LLMs)."""
    return 0.7 if kind in IMAGE_KINDS else 1.0


@dataclass(frozen=True, slots=True)
class Arrived:
    job: Hashable
    at: float
    units: float = 1.0
    model: str = ""


@dataclass(frozen=True, slots=True)
class Started:
    job: Hashable
    at: float
    until: float | None = None  # when it will end, where known (the simulator's clairvoyant reference)


@dataclass(frozen=True, slots=True)
class Requeued:
    job: Hashable
    at: float


@dataclass(frozen=True, slots=True)
class Finished:
    job: Hashable
    at: float
    seconds: float | None = None  # GPU-seconds it ran; None: nothing to learn (it failed, or is unknown)
    units: float | None = None  # its units (default: those given at arrival)


@dataclass(frozen=True, slots=True)
class Dropped:
    job: Hashable
    at: float


Observation = Arrived | Started | Requeued | Finished | Dropped


@dataclass(frozen=True, slots=True)
class ReplicaSnapshot:
    """One replica as the cluster reports it: the checkpoints it holds (or loads) and its state."""

    id: Hashable
    service: str = ""
    models: tuple[str, ...] = ()
    state: ReplicaState = ReplicaState.READY
    loading_since: float | None = None
    busy: int = 0  # jobs it runs now


@dataclass(slots=True)
class _Job:
    at: float
    units: float
    model: str
    work: float
    running: bool = False
    started: bool = False  # it started once: its SLO outcome is counted
    until: float = 0.0


@dataclass(slots=True)
class _Load:
    queued: int = 0
    queued_work: float = 0.0
    running: int = 0
    arrived_work: float = 0.0


@dataclass
class Observer:
    """Observations in, a policy's `Context` out (see the module docstring for the rules)."""

    tick_seconds: float
    start_seconds: float
    slo_wait: float
    slots: int = 1
    window: float = 300.0
    prior: float = 1.0  # seconds per unit before any job finished (`work_prior`)
    track_ends: bool = True  # keep `running_until` (the simulator turns it off unless a policy reads it)
    rate: WorkRate | None = None  # learned; None until the first arrival sizes the prior
    _jobs: dict[Hashable, _Job] = field(default_factory=dict)
    _loads: dict[str, _Load] = field(default_factory=dict)
    _outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    _pending: list[tuple[float, int, Hashable]] = field(default_factory=list)  # (arrival, seq, job)
    _late: set[Hashable] = field(default_factory=set)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _replicas: tuple[ReplicaSnapshot, ...] = ()
    _touched: set[str] = field(default_factory=set)  # checkpoints that may be active (a superset)
    queued: int = 0
    running: int = 0
    arrived: int = 0  # since the last context
    arrived_work: float = 0.0

    def __post_init__(self) -> None:
        if self.slo_wait <= 0 or self.tick_seconds <= 0 or self.window <= 0:
            raise ValidationError("slo_wait, tick_seconds and window must be > 0", field="observer")

    def __contains__(self, job: object) -> bool:
        """Whether `job` is queued or running as far as this observer knows."""
        return job in self._jobs

    # -- observations -----------------------------------------------------------------------------

    def apply(self, obs: Observation) -> None:
        """Feed one observation (the live loop's path; the simulator calls the methods directly)."""
        if isinstance(obs, Arrived):
            self.arrive(obs.job, obs.at, obs.units, obs.model)
        elif isinstance(obs, Started):
            self.start(obs.job, obs.at, obs.until)
        elif isinstance(obs, Requeued):
            self.requeue(obs.job, obs.at)
        elif isinstance(obs, Finished):
            self.finish(obs.job, obs.at, obs.seconds, obs.units)
        else:
            self.drop(obs.job, obs.at)

    def arrive(self, job: Hashable, at: float, units: float = 1.0, model: str = "") -> float:
        """A new job, queued; returns its estimated work (GPU-seconds). A job seen before is ignored."""
        if job in self._jobs:
            return self._jobs[job].work
        rate = self._rate(units)
        work = rate.estimate(units)
        self._jobs[job] = _Job(at, units, model, work)
        load = self._load(model)
        load.queued += 1
        load.queued_work += work
        load.arrived_work += work
        self._touched.add(model)
        self.queued += 1
        self.arrived += 1
        self.arrived_work += work
        heapq.heappush(self._pending, (at, next(self._seq), job))
        return work

    def start(self, job: Hashable, at: float, until: float | None = None) -> None:
        """A replica took `job`; its first start counts its SLO outcome."""
        j = self._jobs.get(job)
        if j is None or j.running:
            return
        self._unqueue(job, j)
        j.running = True
        j.until = at + j.work if until is None else until
        self._load(j.model).running += 1
        self.running += 1
        if not j.started:
            j.started = True
            self._outcomes.append((at, at - j.at <= self.slo_wait + 1e-9))

    def requeue(self, job: Hashable, at: float) -> None:
        """`job` is queued again (its outcome stays the one of its first start)."""
        j = self._jobs.get(job)
        if j is None or not j.running:
            return
        self._unrun(j)
        load = self._load(j.model)
        load.queued += 1
        load.queued_work += j.work
        self.queued += 1

    def finish(
        self, job: Hashable, at: float, seconds: float | None = None, units: float | None = None
    ) -> None:
        """`job` ended; `seconds` of GPU time over its units teach the work rate."""
        j = self._jobs.pop(job, None)
        if j is None:
            return
        if j.running:
            self._unrun(j)
        else:
            self._unqueue(job, j)
        if seconds is not None:
            self.rate = self._rate(j.units).observe(seconds, j.units if units is None else units)

    def drop(self, job: Hashable, at: float) -> None:
        self.finish(job, at)

    def replicas(self, snapshots: Iterable[ReplicaSnapshot]) -> None:
        """The pool as the cluster reports it now (the whole of it)."""
        self._replicas = tuple(snapshots)

    # -- the context ------------------------------------------------------------------------------

    def context(self, now: float, *, future: tuple[Arrival, ...] = ()) -> Context:
        """The policy's input at `now`; what arrived since the previous call is counted once."""
        attainment = self.attainment(now)
        replicas = [r for r in self._replicas if r.state in COUNTED]
        ctx = Context(
            now=now,
            tick_seconds=self.tick_seconds,
            start_seconds=self.start_seconds,
            slo_wait=self.slo_wait,
            slots=self.slots,
            arrived=self.arrived,
            arrived_work=self.arrived_work,
            queued=self.queued,
            queued_work=self.queued_work,
            running=self.running,
            running_until=self.running_until() if self.track_ends else (),
            replicas=len(replicas),
            ready=sum(1 for r in replicas if r.state in SERVING),
            models=self._models(replicas),
            attainment=attainment,
            future=future,
        )
        self.clear_arrivals()
        return ctx

    def clear_arrivals(self) -> None:
        """Forget what arrived since the previous context (a backlog found at start is not news)."""
        self.arrived, self.arrived_work = 0, 0.0
        for load in self._loads.values():
            load.arrived_work = 0.0

    @property
    def queued_work(self) -> float:
        return sum(load.queued_work for load in self._loads.values()) if self.queued else 0.0

    def running_until(self) -> tuple[float, ...]:
        return tuple(j.until for j in self._jobs.values() if j.running)

    def attainment(self, now: float) -> float | None:
        """Share of jobs started in the window within the SLO, queued late ones counted as misses."""
        while self._outcomes and self._outcomes[0][0] < now - self.window:
            self._outcomes.popleft()
        late = self._count_late(now)
        total = len(self._outcomes) + late
        if total == 0:
            return None
        return sum(ok for _, ok in self._outcomes) / total

    def heads(self) -> dict[str, float]:
        """Per checkpoint with queued jobs, when its oldest queued job arrived (placement serves the
        oldest first)."""
        out: dict[str, float] = {}
        for j in self._jobs.values():
            if not j.running and (j.model not in out or j.at < out[j.model]):
                out[j.model] = j.at
        return out

    def estimate(self, units: float) -> float:
        """The GPU-seconds `units` of work take at the rate learned so far."""
        return self._rate(units).estimate(units)

    def model_loads(self) -> dict[str, ModelLoad]:
        """Per checkpoint: queued, queued work, running (replicas not counted)."""
        return {
            m: ModelLoad(load.queued, load.queued_work, load.running, 0, load.arrived_work)
            for m, load in sorted(self._loads.items())
        }

    # -- inside -----------------------------------------------------------------------------------

    def _rate(self, units: float) -> WorkRate:
        if self.rate is None:
            self.rate = WorkRate(prior=self.prior, prior_units=PRIOR_JOBS * max(units, 1e-9))
        return self.rate

    def _load(self, model: str) -> _Load:
        load = self._loads.get(model)
        if load is None:
            load = self._loads[model] = _Load()
        return load

    def _unqueue(self, job: Hashable, j: _Job) -> None:
        load = self._load(j.model)
        load.queued -= 1
        load.queued_work = max(0.0, load.queued_work - j.work)
        self.queued -= 1
        self._late.discard(job)

    def _unrun(self, j: _Job) -> None:
        j.running = False
        self._load(j.model).running -= 1
        self.running -= 1

    def _count_late(self, now: float) -> int:
        """Queued jobs that have waited past the SLO and never started: each is a miss already."""
        limit = now - self.slo_wait
        while self._pending and self._pending[0][0] < limit - 1e-9:
            _, _, job = heapq.heappop(self._pending)
            j = self._jobs.get(job)
            if j is not None and not j.running and not j.started:
                self._late.add(job)
        return len(self._late)

    def _models(self, replicas: list[ReplicaSnapshot]) -> dict[str, ModelLoad]:
        held: dict[str, int] = {}
        for r in replicas:
            for m in r.models:
                held[m] = held.get(m, 0) + 1
        for r in self._replicas:  # a draining replica's checkpoint is still in play this tick
            for m in r.models:
                held.setdefault(m, 0)
        out = {}
        active = {m for m in self._touched if _active(self._loads[m])}
        self._touched = active  # those left only by this tick's arrivals go at the next context
        for m in sorted(held.keys() | active):
            load = self._loads.get(m) or _Load()
            out[m] = ModelLoad(load.queued, load.queued_work, load.running, held.get(m, 0), load.arrived_work)
        return out


def _active(load: _Load) -> bool:
    return bool(load.queued or load.running or load.arrived_work > 0)


__all__ = [
    "PRIOR_JOBS",
    "Arrived",
    "Dropped",
    "Finished",
    "Observation",
    "Observer",
    "ReplicaSnapshot",
    "Requeued",
    "Started",
    "work_prior",
]
