"""Shared wrappers around any policy: bounds, scale-up/down delays, change-rate limits, SLO fall-back.

Each wrapper is itself a policy: `decide(ctx, state) -> (plan, state)` where `state` is a pair of the
inner policy's state and the wrapper's own frozen value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from swell.brain.context import Context, Plan, Policy


@dataclass(frozen=True, slots=True)
class Bounded:
    """Never below `low` nor above `high` replicas."""

    inner: Policy
    low: int = 0
    high: int | None = None

    @property
    def name(self) -> str:
        return self.inner.name

    def initial(self) -> Any:
        return self.inner.initial()

    def decide(self, ctx: Context, state: Any) -> tuple[Plan, Any]:
        plan, state = self.inner.decide(ctx, state)
        n = max(self.low, plan.replicas if self.high is None else min(self.high, plan.replicas))
        return (plan if n == plan.replicas else plan.with_replicas(n, f"{plan.reason}; bounded")), state


@dataclass(frozen=True, slots=True)
class DelayState:
    current: int = 0
    above_since: float | None = None
    below_since: float | None = None


@dataclass(frozen=True, slots=True)
class Delayed:
    """Follow the inner target up only after it stayed above for `up_delay` seconds, and down only
    after it stayed below for `down_delay` (Ray Serve's upscale/downscale delays; KEDA's cool-down is
    `up_delay=0`). A move goes straight to the inner target."""

    inner: Policy
    up_delay: float = 0.0
    down_delay: float = 300.0

    @property
    def name(self) -> str:
        return self.inner.name

    def initial(self) -> tuple[Any, DelayState]:
        return self.inner.initial(), DelayState()

    def decide(self, ctx: Context, state: tuple[Any, DelayState]) -> tuple[Plan, Any]:
        inner_state, own = state
        plan, inner_state = self.inner.decide(ctx, inner_state)
        own = _delay_step(own, plan.replicas, ctx.now, self.up_delay, self.down_delay)
        if own.current != plan.replicas:
            plan = plan.with_replicas(own.current, f"{plan.reason}; held")
        return plan, (inner_state, own)


def _delay_step(s: DelayState, want: int, now: float, up: float, down: float) -> DelayState:
    if want > s.current:
        since = now if s.above_since is None else s.above_since
        if now - since >= up:
            return DelayState(want)
        return DelayState(s.current, above_since=since)
    if want < s.current:
        since = now if s.below_since is None else s.below_since
        if now - since >= down:
            return DelayState(want)
        return DelayState(s.current, below_since=since)
    return DelayState(s.current)


@dataclass(frozen=True, slots=True)
class RateState:
    current: int | None = None
    changes: tuple[float, ...] = ()  # times of recent changes


@dataclass(frozen=True, slots=True)
class RateLimited:
    """At most `max_changes` changes of the replica count within any `window` seconds."""

    inner: Policy
    max_changes: int = 6
    window: float = 60.0

    @property
    def name(self) -> str:
        return self.inner.name

    def initial(self) -> tuple[Any, RateState]:
        return self.inner.initial(), RateState()

    def decide(self, ctx: Context, state: tuple[Any, RateState]) -> tuple[Plan, Any]:
        inner_state, own = state
        plan, inner_state = self.inner.decide(ctx, inner_state)
        recent = tuple(t for t in own.changes if ctx.now - t < self.window)
        current = ctx.replicas if own.current is None else own.current
        if plan.replicas == current:
            return plan, (inner_state, RateState(current, recent))
        if len(recent) >= self.max_changes:
            return plan.with_replicas(current, f"{plan.reason}; rate-limited"), (
                inner_state,
                RateState(current, recent),
            )
        return plan, (inner_state, RateState(plan.replicas, (*recent, ctx.now)))


@dataclass(frozen=True, slots=True)
class SloFallback:
    """Use `reactive` instead of `primary` while recent SLO attainment is below `target`.

    Both policies see every tick, so the one not in charge keeps its forecasts current; while the
    fall-back is active the larger of the two plans wins (falling back never shrinks the pool)."""

    primary: Policy
    reactive: Policy
    target: float = 0.99

    @property
    def name(self) -> str:
        return self.primary.name

    def initial(self) -> tuple[Any, Any]:
        return self.primary.initial(), self.reactive.initial()

    def decide(self, ctx: Context, state: tuple[Any, Any]) -> tuple[Plan, Any]:
        plan, primary_state = self.primary.decide(ctx, state[0])
        backup, reactive_state = self.reactive.decide(ctx, state[1])
        breached = ctx.attainment is not None and ctx.attainment < self.target
        if breached and backup.replicas > plan.replicas:
            reason = f"SLO {ctx.attainment:.3f} < {self.target}: {self.reactive.name} ({backup.reason})"
            plan = replace(plan, replicas=backup.replicas, reason=reason)
        return plan, (primary_state, reactive_state)


def guarded(
    policy: Policy,
    reactive: Policy,
    *,
    target: float = 0.99,
    max_changes: int = 6,
    window: float = 60.0,
    low: int = 0,
    high: int | None = None,
) -> Policy:
    """The stack the live loop runs per service, and the simulator can run too:
    `Bounded(RateLimited(SloFallback(policy, reactive, target), max_changes, window), low, high)`."""
    return Bounded(RateLimited(SloFallback(policy, reactive, target), max_changes, window), low, high)
