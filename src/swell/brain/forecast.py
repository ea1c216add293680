"""Small pure forecasters over a stream of (time, work) observations. State is a frozen value."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


def decay(value: float, dt: float, tau: float) -> float:
    """`value` after `dt` seconds of exponential decay with time constant `tau`."""
    return value * math.exp(-dt / tau) if tau > 0 else 0.0


@dataclass(frozen=True, slots=True)
class RateEwma:
    """Exponentially weighted arrival rate (work per second) with time constant `tau`."""

    tau: float
    rate: float = 0.0
    at: float | None = None

    def observe(self, now: float, work: float) -> RateEwma:
        if self.at is None:
            return replace(self, rate=work / self.tau, at=now)
        dt = max(0.0, now - self.at)
        return replace(self, rate=decay(self.rate, dt, self.tau) + work / self.tau, at=now)


@dataclass(frozen=True, slots=True)
class DailyProfile:
    """Work arriving per slot of the day, averaged over the days seen (an EWMA across days).

    `expected(t, horizon)` is the work the profile expects in `[t, t + horizon)`; it answers 0 until
    one full day has been seen, so a fresh profile never invents demand.
    """

    slot_seconds: float = 900.0
    weight: float = 0.5  # weight of the newest day
    slots: tuple[float, ...] = ()
    current_slot: int = -1
    current_work: float = 0.0
    first_slot: int = -1

    @property
    def per_day(self) -> int:
        return round(86_400 / self.slot_seconds)

    def observe(self, now: float, work: float) -> DailyProfile:
        slot = int(now // self.slot_seconds)
        if slot == self.current_slot:
            return replace(self, current_work=self.current_work + work)
        profile = self._folded()
        first = slot if self.first_slot < 0 else self.first_slot
        return replace(profile, current_slot=slot, current_work=work, first_slot=first)

    def _folded(self) -> DailyProfile:
        if self.current_slot < 0:
            return replace(self, slots=(0.0,) * self.per_day)
        slots = list(self.slots)
        i = self.current_slot % self.per_day
        seen_before = self.current_slot - self.first_slot >= self.per_day
        slots[i] = (
            (1 - self.weight) * slots[i] + self.weight * self.current_work
            if seen_before
            else (self.current_work)
        )
        return replace(self, slots=tuple(slots))

    def expected(self, t: float, horizon: float) -> float:
        slot = int(t // self.slot_seconds)
        if not self.slots or slot - self.first_slot < self.per_day:
            return 0.0
        n = max(1, math.ceil(horizon / self.slot_seconds))
        total = sum(self.slots[(slot + k) % self.per_day] for k in range(n))
        return total * min(1.0, horizon / (n * self.slot_seconds))


@dataclass(frozen=True, slots=True)
class ProfileTrust:
    """How far a `DailyProfile` may be believed: the recent precision of its "work will come".

    At the end of each slot in which the profile expected work (from previous days, before the
    slot was folded in), it scores 1 if work came and 0 if not, into an EWMA of `weight` per slot.
    The profile is `trusted` while that score is at least `threshold`: a daily rhythm that stopped
    (a holiday, a tenant gone) stops keeping a replica within a few slots, and one that holds keeps
    it. It starts trusted; a fresh profile predicts nothing anyway.
    """

    score: float = 1.0
    weight: float = 0.1
    threshold: float = 0.5

    @property
    def trusted(self) -> bool:
        return self.score >= self.threshold

    def observe(self, profile: DailyProfile, now: float, work: float) -> ProfileTrust:
        """Call with the profile as it was before `profile.observe(now, work)`."""
        slot = int(now // profile.slot_seconds)
        if profile.current_slot < 0 or slot == profile.current_slot:
            return self
        start = profile.current_slot * profile.slot_seconds
        if profile.expected(start, profile.slot_seconds) <= 0:
            return self
        hit = 1.0 if profile.current_work > 0 else 0.0
        return replace(self, score=(1 - self.weight) * self.score + self.weight * hit)


@dataclass(frozen=True, slots=True)
class WorkRate:
    """GPU-seconds per unit of work (steps x images, tokens), learned from finished jobs.

    Starts from `prior` seconds per unit, weighted as `prior_units` units of evidence."""

    prior: float = 0.7
    prior_units: float = 300.0
    seconds: float = 0.0
    units: float = 0.0

    def observe(self, seconds: float, units: float) -> WorkRate:
        return replace(self, seconds=self.seconds + seconds, units=self.units + units)

    @property
    def rate(self) -> float:
        return (self.seconds + self.prior * self.prior_units) / (self.units + self.prior_units)

    def estimate(self, units: float) -> float:
        return units * self.rate
