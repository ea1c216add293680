"""Autoscaling policies: pure functions of a `Context` returning a `Plan` and their new state.

`POLICIES` names every policy with its knobs and the grid `swell sim sweep` explores; `make_policy`
builds one by name. Baselines are written as their systems document them:

- `static`: a fixed pool.
- `queue-length` (KEDA): backlog (queued + in flight) per replica, cool-down before scaling down.
- `concurrency` (Ray Serve / Knative): in-flight jobs per replica with upscale and downscale delays.
- `predictive`: forecast work rate at a horizon >= the start time, reactive when the forecast misses.
- `swell`: work-weighted, graded keep-alive stretched by recent SLO misses (learned online, not
  fitted to a trace), a daily profile trusted as far as it predicted, model placement, warm caches.
- `clairvoyant`: knows future arrivals; a reference for what any online policy could reach.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from swell.brain.context import Context, ModelLoad, Plan, Policy
from swell.brain.forecast import DailyProfile, ProfileTrust, RateEwma, decay
from swell.brain.guardrails import Delayed
from swell.core.errors import ValidationError


@dataclass(frozen=True, slots=True)
class Static:
    replicas: int = 1
    name: str = "static"

    def initial(self) -> None:
        return None

    def decide(self, ctx: Context, state: None) -> tuple[Plan, None]:
        return Plan(self.replicas, f"static {self.replicas}"), None


@dataclass(frozen=True, slots=True)
class PerReplica:
    """Jobs in the system (queued + running) divided by a target per replica, rounded up."""

    target: float = 1.0
    name: str = "per-replica"

    def initial(self) -> None:
        return None

    def decide(self, ctx: Context, state: None) -> tuple[Plan, None]:
        n = ctx.replicas_for(ctx.in_system / self.target)
        return Plan(n, f"{ctx.in_system} jobs / {self.target:g} per replica"), None


def queue_length(target: float = 1.0, cooldown: float = 300.0) -> Policy:
    """KEDA: desired = ceil(backlog / target), up at once, down after `cooldown` seconds."""
    return Delayed(PerReplica(target, "queue-length"), up_delay=0.0, down_delay=cooldown)


def concurrency(target: float = 2.0, up_delay: float = 30.0, down_delay: float = 600.0) -> Policy:
    """Ray Serve's defaults: target_ongoing_requests=2, upscale_delay_s=30, downscale_delay_s=600."""
    return Delayed(PerReplica(target, "concurrency"), up_delay=up_delay, down_delay=down_delay)


@dataclass(frozen=True, slots=True)
class ForecastState:
    rate: RateEwma
    profile: DailyProfile = field(default_factory=DailyProfile)


@dataclass(frozen=True, slots=True)
class Predictive:
    """Provision for the work rate forecast `horizon` seconds ahead (at least the start time):
    the larger of a recent EWMA and the same time on previous days, times `1 + margin`. When the
    jobs in the system outnumber that plan, the forecast missed: go reactive (one job per replica)."""

    horizon: float = 600.0
    margin: float = 0.5
    name: str = "predictive"

    def initial(self) -> ForecastState:
        return ForecastState(RateEwma(self.horizon))

    def decide(self, ctx: Context, state: ForecastState) -> tuple[Plan, ForecastState]:
        state = ForecastState(
            state.rate.observe(ctx.now, ctx.arrived_work), state.profile.observe(ctx.now, ctx.arrived_work)
        )
        horizon = max(self.horizon, ctx.start_seconds)
        seasonal = state.profile.expected(ctx.now + ctx.start_seconds, horizon) / horizon
        rate = max(state.rate.rate, seasonal)
        planned = ctx.replicas_for(rate * (1 + self.margin))
        if ctx.replicas_for(ctx.in_system) > planned:
            return Plan(ctx.replicas_for(ctx.in_system), f"forecast {rate:.2f} GPUs missed: reactive"), state
        return Plan(planned, f"forecast {rate:.2f} GPUs at {horizon:.0f}s"), state


def predictive(horizon: float = 600.0, margin: float = 0.5) -> Policy:
    return Delayed(Predictive(horizon, margin), up_delay=0.0, down_delay=horizon)


MIN_WORK = 1.0  # GPU-seconds of decayed recent work below which a checkpoint is forgotten
ModelWork = Mapping[str, tuple[float, float]]  # checkpoint -> (decayed work, when)


@dataclass(frozen=True, slots=True)
class SwellState:
    last_need: tuple[float, ...] = ()  # last time at least k+1 replicas were needed
    burst: RateEwma = field(default_factory=lambda: RateEwma(120.0))
    profile: DailyProfile = field(default_factory=DailyProfile)
    model_work: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # (ewma work, at)
    warm: tuple[str, ...] = ()
    pressure: float = 0.0  # log2 of the keep-alive's stretch, learned from recent SLO misses
    trust: ProfileTrust = field(default_factory=ProfileTrust)


@dataclass(frozen=True, slots=True)
class Swell:
    """The default policy. Its constants are time scales and shares, not counts fitted to a trace:
    what depends on the demand (how long to hold capacity) is learned online from SLO misses.

    - Need now is weighed in work: running jobs plus the replicas that drain the queued GPU-seconds
      within the SLO wait.
    - Capacity that was needed recently is kept on a graded keep-alive: the k-th replica stays
      `keep_alive * 2 ** pressure / k ** grade` seconds after it was last needed. The first replica,
      cheap insurance against the next session's cold start, stays longest; burst capacity goes first.
    - Adaptive headroom (`pressure`): every tick in which recent SLO attainment is below `target`
      adds `tick / react` (a breach as long as `react` doubles every keep-alive); every tick at or
      above it takes `tick / relax` away (a day without misses halves it), between 0 and
      `max_pressure`. On demand that surprises (bursts larger or later than the recent past) capacity
      is held longer; on calm days the policy falls back to its cheap base. The base `keep_alive` is
      therefore the keep-alive of a calm trace. `react` is one attainment window; `relax` one day.
    - Headroom in replicas: while under pressure the kept level is raised by `headroom * pressure`
      of itself (rounded up), so a surprise one replica larger than the recent peak can still start.
    - Ahead of demand: the recent arrival rate over the start time (a burst in progress brings more),
      and the daily profile, trusted only as far as it predicted recently (`ProfileTrust`): one
      replica while previous days saw work in the coming keep-alive window and the profile has been
      right about whether work comes.
    - Placement: replicas per checkpoint in proportion to recent work, every checkpoint with queued
      jobs held somewhere; the `warm_models` busiest checkpoints kept in every node's host memory.
    """

    keep_alive: float = 3600.0
    burst_margin: float = 1.0
    warm_models: int = 8
    seasonal: bool = True
    grade: float = 1.5
    drain_seconds: float | None = None  # queued work to drain per new replica; default: the SLO wait
    max_tracked: int = 256
    target: float = 0.99  # the attainment the adaptive headroom steers to
    react: float = 300.0  # seconds of breached SLO that double the keep-alive
    relax: float = 86_400.0  # seconds of met SLO that halve it again
    max_pressure: float = 3.0  # the keep-alive stretches at most 2 ** 3 = 8x
    headroom: float = 0.0  # extra share of the kept level per unit of pressure
    name: str = "swell"

    def __post_init__(self) -> None:
        # knobs come from YAML as floats (`brain.options` is dict[str, float]): make the counts ints
        for knob in ("warm_models", "max_tracked"):
            value = getattr(self, knob)
            if value < 0 or value != int(value):
                raise ValidationError(f"swell knob {knob} must be a whole number >= 0", field=knob)
            object.__setattr__(self, knob, int(value))
        object.__setattr__(self, "seasonal", bool(self.seasonal))
        for knob in ("keep_alive", "grade", "burst_margin", "max_pressure", "headroom"):
            if getattr(self, knob) < 0:
                raise ValidationError(f"swell knob {knob} must be >= 0", field=knob)
        for knob in ("react", "relax"):
            if getattr(self, knob) <= 0:
                raise ValidationError(f"swell knob {knob} must be > 0", field=knob)
        if not 0 < self.target <= 1:
            raise ValidationError("swell knob target must be in (0, 1]", field="target")

    def initial(self) -> SwellState:
        return SwellState()

    def decide(self, ctx: Context, state: SwellState) -> tuple[Plan, SwellState]:
        burst = (
            state.burst
            if state.burst.tau == ctx.start_seconds or ctx.start_seconds <= 0
            else (RateEwma(ctx.start_seconds, state.burst.rate, state.burst.at))
        )
        burst = burst.observe(ctx.now, ctx.arrived_work)
        pressure = self._pressure(ctx, state.pressure)
        stretch = 2.0**pressure
        trust = state.trust.observe(state.profile, ctx.now, ctx.arrived_work)
        profile = state.profile.observe(ctx.now, ctx.arrived_work)
        need = self._need_now(ctx)
        ahead = ctx.replicas_for(burst.rate * self.burst_margin)
        last_need = _mark(state.last_need, max(need, ahead), ctx.now, self.max_tracked)
        keep = self.keep_alive * stretch
        kept = sum(1 for k, t in enumerate(last_need) if ctx.now - t < keep / (k + 1) ** self.grade)
        kept = math.ceil(kept * (1 + self.headroom * pressure) - 1e-9)
        seasonal = 1 if self.seasonal and trust.trusted and profile.expected(ctx.now, keep) > 0 else 0
        n = max(need, ahead, kept, seasonal)
        model_work, warm = self._models(ctx, state)
        plan = Plan(
            n,
            f"need {need}, ahead {ahead}, kept {kept} (x{stretch:.2g}), seasonal {seasonal}",
            _apportion(n, ctx.models, model_work, ctx.now, keep),
            warm,
        )
        return plan, SwellState(last_need, burst, profile, model_work, warm, pressure, trust)

    def _pressure(self, ctx: Context, pressure: float) -> float:
        """Up while recent attainment is below target, down while it is met (or nothing finished)."""
        if ctx.attainment is not None and ctx.attainment < self.target:
            return min(self.max_pressure, pressure + ctx.tick_seconds / self.react)
        return max(0.0, pressure - ctx.tick_seconds / self.relax)

    def _need_now(self, ctx: Context) -> int:
        running = ctx.replicas_for(ctx.running)
        if ctx.queued == 0:
            return running
        drain = self.drain_seconds or ctx.slo_wait
        return running + max(1, ctx.replicas_for(ctx.queued_work / drain))

    def _models(self, ctx: Context, state: SwellState) -> tuple[ModelWork, tuple[str, ...]]:
        if ctx.arrived_work <= 0:
            return state.model_work, state.warm
        work = dict(state.model_work)
        for model, load in ctx.models.items():
            if load.arrived_work > 0:
                value, at = work.get(model, (0.0, ctx.now))
                work[model] = (decay(value, ctx.now - at, self.keep_alive) + load.arrived_work, ctx.now)
        current = {m: decay(v, ctx.now - at, self.keep_alive) for m, (v, at) in work.items()}
        work = {m: (current[m], ctx.now) for m in current if current[m] >= MIN_WORK}  # forget the long gone
        ranked = sorted(work, key=lambda m: -work[m][0])
        return work, tuple(ranked[: self.warm_models])


def _mark(last: tuple[float, ...], need: int, now: float, cap: int) -> tuple[float, ...]:
    need = min(need, cap)
    if need == 0:
        return last
    head = (now,) * need
    return head + last[need:] if len(last) > need else head


def _apportion(
    n: int, models: Mapping[str, ModelLoad], work: Mapping[str, tuple[float, float]], now: float, tau: float
) -> dict[str, int]:
    """Replicas per checkpoint: one for each checkpoint with queued jobs (busiest first), the rest
    by largest remainder of recent work."""
    if n <= 0:
        return {}
    weight = {m: decay(v, now - at, tau) for m, (v, at) in work.items()}
    for m, load in models.items():
        weight[m] = weight.get(m, 0.0) + load.queued_work + load.running
    out: dict[str, int] = {}
    queued = sorted((m for m, load in models.items() if load.queued), key=lambda m: -weight[m])
    for m in queued[:n]:
        out[m] = 1
    left = n - sum(out.values())
    total = sum(weight.values())
    if left <= 0 or total <= 0:
        return out
    shares = {m: left * w / total for m, w in weight.items()}
    for m, s in shares.items():
        if int(s):
            out[m] = out.get(m, 0) + int(s)
    left = n - sum(out.values())
    for m in sorted(shares, key=lambda m: -(shares[m] - int(shares[m])))[: max(0, left)]:
        out[m] = out.get(m, 0) + 1
    return out


@dataclass(frozen=True, slots=True)
class Clairvoyant:
    """Holds, at every moment, the peak number of jobs that will be running (each started on
    arrival) before a replica asked for now could serve: the reference for online policies."""

    name: str = "clairvoyant"

    def initial(self) -> None:
        return None

    def lookahead(self, start_seconds: float, tick_seconds: float) -> float:
        """How far ahead the simulator must show future arrivals (`Context.future`)."""
        return start_seconds + 2 * tick_seconds

    def decide(self, ctx: Context, state: None) -> tuple[Plan, None]:
        events = [(t, -1) for t in ctx.running_until]
        if ctx.queued:
            events += [(ctx.now + ctx.queued_work / ctx.queued, -1)] * ctx.queued
        for a in ctx.future:
            events += [(a.at, 1), (a.at + a.work, -1)]
        events.sort()
        level = peak = len(ctx.running_until) + ctx.queued
        for _, step in events:
            level += step
            peak = max(peak, level)
        n = ctx.replicas_for(peak)
        return Plan(
            n, f"peak of {peak} running within {self.lookahead(ctx.start_seconds, ctx.tick_seconds):.0f}s"
        ), None


@dataclass(frozen=True, slots=True)
class PolicySpec:
    make: Callable[..., Policy]
    knob: str  # what the sweep varies, for the docs and the plot
    grid: tuple[Mapping[str, float], ...]
    doc: str


POLICIES: dict[str, PolicySpec] = {
    "static": PolicySpec(
        lambda replicas=1: Static(int(replicas)),
        "replicas",
        tuple({"replicas": n} for n in (1, 2, 4, 6, 8, 10)),
        "a fixed pool",
    ),
    "queue-length": PolicySpec(
        queue_length,
        "target x cooldown",
        tuple(
            {"target": t, "cooldown": c} for t in (1, 2) for c in (300, 1800, 3600, 7200, 14400, 28800, 43200)
        ),
        "KEDA: backlog per replica, cool-down",
    ),
    "concurrency": PolicySpec(
        concurrency,
        "target x down_delay",
        tuple(
            {"target": t, "down_delay": d}
            for t in (1, 2)
            for d in (600, 1800, 3600, 7200, 14400, 28800, 43200)
        ),
        "Ray Serve / Knative: in-flight per replica, delays",
    ),
    "predictive": PolicySpec(
        predictive,
        "horizon",
        tuple({"horizon": h} for h in (300, 900, 1800, 3600, 7200, 14400)),
        "forecast at a horizon, reactive on misses",
    ),
    "swell": PolicySpec(
        Swell,
        "keep_alive",
        tuple({"keep_alive": k} for k in (900, 1800, 3600, 5400, 7200, 10800)),
        "work-weighted, graded keep-alive stretched by recent misses, placement",
    ),
    "clairvoyant": PolicySpec(Clairvoyant, "none", ({},), "knows future arrivals (reference)"),
}


def make_policy(name: str, **knobs: Any) -> Policy:
    """The policy registered as `name`, built with `knobs` (its documented defaults otherwise)."""
    try:
        spec = POLICIES[name]
    except KeyError:
        known = ", ".join(POLICIES)
        raise ValidationError(f"unknown policy {name!r}; known: {known}", field="policy") from None
    try:
        return spec.make(**knobs)
    except TypeError as exc:
        raise ValidationError(f"bad knobs for policy {name!r}: {exc}", field="policy") from None


def knob_label(knobs: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in knobs.items()) or "-"


__all__ = [
    "POLICIES",
    "Clairvoyant",
    "PerReplica",
    "Predictive",
    "Static",
    "Swell",
    "concurrency",
    "knob_label",
    "make_policy",
    "predictive",
    "queue_length",
]
