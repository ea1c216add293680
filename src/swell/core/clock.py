"""Injected clocks: production code never reads the wall clock directly.

`SystemClock` is the real one; `ManualClock` is advanced by hand in tests and by the
simulator's event loop, so the same code runs on virtual time.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall time, comparable across processes)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock never runs backwards")
        self._now += seconds

    def set(self, t: float) -> None:
        if t < self._now:
            raise ValueError("a clock never runs backwards")
        self._now = t

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now:.3f})"
