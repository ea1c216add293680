"""Rolling-origin validation: tune each policy on some days of a trace, judge it on the next ones.

A policy tuned and judged on the same file fits that file. The later traces it will be judged on
are unseen, so this module does what judging will do, on days the tuning never saw:

- the trace is cut into days at `cut_hour` (default 12:00, inside the quiet hours of the image
  trace, so no burst is split in two); day 1 runs from the first arrival to the first cut;
- fold k tunes on days `1..k` and tests on days `k+1..k+test_days` (`origins`, default 5, 7, 9, 11);
- every window is replayed as its own trace from an empty pool, as a later trace file will be;
- per fold and policy, the *tuned* setting is the cheapest grid point that reached `target` on the
  tuning days (the best attainment when none did); its run on the test days is the honest online
  figure. The *hindsight* setting is the cheapest grid point reaching `target` on the test days
  themselves: how a judge who sweeps every policy on the unseen file sees it.

Pooled figures add GPU-hours over the test windows and weigh attainment by jobs. Everything is
deterministic for the pool's seed; runs may go to several processes (`jobs`) with identical results.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from swell.brain.policies import POLICIES, knob_label
from swell.core.errors import ValidationError
from swell.sim.cluster import PoolConfig
from swell.sim.report import Report
from swell.sim.sweep import OnDone, Point, run_points
from swell.sim.trace import Trace

DAY = 86_400.0
ORIGINS = (5, 7, 9, 11)


@dataclass(frozen=True, slots=True)
class Fold:
    """Tune on days `tune[0]..tune[1]`, test on days `test[0]..test[1]` (1-based, inclusive)."""

    tune: tuple[int, int]
    test: tuple[int, int]

    @property
    def label(self) -> str:
        return f"tune {_days(self.tune)}, test {_days(self.test)}"


@dataclass(frozen=True, slots=True)
class Score:
    """GPU-hours and attainment over one or more windows (attainment weighted by jobs)."""

    knob: str
    gpu_hours: float
    attainment: float
    jobs: int

    @staticmethod
    def of(reports: Sequence[Report]) -> Score:
        jobs = sum(r.jobs for r in reports)
        met = sum(r.slo_attainment * r.jobs for r in reports)
        return Score(reports[0].knob, sum(r.gpu_hours for r in reports), met / jobs if jobs else 1.0, jobs)


@dataclass(frozen=True, slots=True)
class FoldResult:
    fold: Fold
    policy: str
    tune: Report  # the setting picked on the tuning days, there
    test: Report  # the same setting on the test days
    hindsight: Report | None  # the cheapest setting reaching the target on the test days


@dataclass(frozen=True)
class Validation:
    target: float
    folds: tuple[Fold, ...]
    results: tuple[FoldResult, ...]
    pooled_hindsight: Mapping[str, Score | None]  # per policy: cheapest grid point over all test days

    def policies(self) -> list[str]:
        return list(dict.fromkeys(r.policy for r in self.results))

    def of(self, policy: str) -> list[FoldResult]:
        return [r for r in self.results if r.policy == policy]

    def pooled_tuned(self, policy: str) -> Score:
        """The tuned settings' test runs, every fold together."""
        return Score.of([r.test for r in self.of(policy)])


def folds(days: int, origins: Iterable[int] = ORIGINS, test_days: int = 2) -> list[Fold]:
    """One fold per origin k: tune on days 1..k, test on the next `test_days` (cut at the last day)."""
    if test_days < 1:
        raise ValidationError("test_days must be >= 1", field="test_days")
    out = []
    for k in origins:
        if not 1 <= k < days:
            raise ValidationError(f"origin {k} leaves no test day in {days} days", field="origins")
        out.append(Fold((1, k), (k + 1, min(days, k + test_days))))
    return out


def day_starts(span: float, origin_clock: float, cut_hour: float = 12.0) -> np.ndarray:
    """Start of each day in seconds from the first arrival: 0, then every cut at `cut_hour` o'clock
    after it. `origin_clock` is the first arrival's seconds after midnight."""
    if not 0 <= cut_hour < 24:
        raise ValidationError("cut_hour must be in [0, 24)", field="cut_hour")
    first = (cut_hour * 3600 - origin_clock) % DAY or DAY
    cuts = np.arange(first, span + 1e-9, DAY) if span >= first else np.zeros(0)
    return np.concatenate([[0.0], cuts[cuts < span]]) if span > 0 else np.zeros(1)


def window(trace: Trace, starts: np.ndarray, days: tuple[int, int]) -> Trace:
    """The jobs that arrived in days `days[0]..days[1]`, re-timed from the window's first job."""
    lo = float(starts[days[0] - 1])
    hi = float(starts[days[1]]) if days[1] < len(starts) else np.inf
    i, j = np.searchsorted(trace.arrival, [lo, hi], side="left")
    if j <= i:
        raise ValidationError(f"no jobs in days {_days(days)} of {trace.name}", field="days")
    return replace(trace.slice(int(i), int(j)), name=f"{trace.name}[days {_days(days)}]")


def origin_clock(path: str | Path) -> float:
    """Seconds after midnight of the first row's time (the first arrival: rows are sorted)."""
    with Path(path).open(newline="") as f:
        row = next(csv.DictReader(f), None)
    if row is None:
        raise ValidationError(f"{path} has no rows", field="trace")
    stamp = row.get("gmt_create") or row.get("TIMESTAMP") or ""
    t = datetime.fromisoformat(stamp.strip().partition(".")[0])
    return t.hour * 3600 + t.minute * 60 + t.second


def pick(reports: Iterable[Report], target: float) -> Report:
    """The cheapest report reaching `target`; when none does, the best attainment (then cheapest)."""
    reports = list(reports)
    meeting = [r for r in reports if r.slo_attainment >= target]
    if meeting:
        return min(meeting, key=lambda r: r.gpu_hours)
    return max(reports, key=lambda r: (r.slo_attainment, -r.gpu_hours))


def validate(
    trace: Trace,
    names: Sequence[str],
    pool: PoolConfig,
    *,
    starts: np.ndarray,
    fold_list: Sequence[Fold],
    target: float = 0.99,
    jobs: int = 1,
    on_done: OnDone | None = None,
) -> Validation:
    """Every policy's grid on every fold's tuning and test windows, then the picks (module doc)."""
    windows = {w: window(trace, starts, w) for f in fold_list for w in (f.tune, f.test)}
    grid = [(name, dict(knobs)) for name in names for knobs in POLICIES[name].grid]
    keys = [(w, name, knob_label(k)) for w in windows for name, k in grid]
    points = [Point(windows[w], name, k) for w in windows for name, k in grid]
    runs = dict(zip(keys, run_points(points, pool, jobs=jobs, on_done=on_done), strict=True))
    results = []
    for f in fold_list:
        for name in names:
            labels = [knob_label(k) for n, k in grid if n == name]
            tuned = pick([runs[(f.tune, name, lab)] for lab in labels], target)
            tests = [runs[(f.test, name, lab)] for lab in labels]
            hindsight = min(
                (r for r in tests if r.slo_attainment >= target), key=lambda r: r.gpu_hours, default=None
            )
            results.append(FoldResult(f, name, tuned, runs[(f.test, name, tuned.knob)], hindsight))
    pooled = {name: _pooled_hindsight(runs, fold_list, name, grid, target) for name in names}
    return Validation(target, tuple(fold_list), tuple(results), pooled)


def _pooled_hindsight(
    runs: Mapping[tuple[tuple[int, int], str, str], Report],
    fold_list: Sequence[Fold],
    name: str,
    grid: Sequence[tuple[str, Mapping[str, float]]],
    target: float,
) -> Score | None:
    """One sweep over all the test days together: each grid point's pooled score, the cheapest
    reaching the target."""
    tests = list(dict.fromkeys(f.test for f in fold_list))
    scores = [Score.of([runs[(w, name, knob_label(k))] for w in tests]) for n, k in grid if n == name]
    meeting = [s for s in scores if s.attainment >= target]
    return min(meeting, key=lambda s: s.gpu_hours) if meeting else None


def _days(days: tuple[int, int]) -> str:
    return f"{days[0]}-{days[1]}" if days[1] != days[0] else str(days[0])


__all__ = [
    "Fold",
    "FoldResult",
    "Score",
    "Validation",
    "day_starts",
    "folds",
    "origin_clock",
    "pick",
    "rows",
    "validate",
    "window",
]


def rows(v: Validation) -> list[dict[str, object]]:
    """The validation as flat JSON-ready rows: one per fold and policy, then one pooled per policy."""
    out: list[dict[str, object]] = []
    for r in v.results:
        h = r.hindsight
        out.append(
            {
                "kind": "fold",
                "fold": r.fold.label,
                "policy": r.policy,
                "knob": r.tune.knob,
                "tune_gpu_hours": round(r.tune.gpu_hours, 2),
                "tune_attainment": round(r.tune.slo_attainment, 5),
                "test_gpu_hours": round(r.test.gpu_hours, 2),
                "test_attainment": round(r.test.slo_attainment, 5),
                "test_jobs": r.test.jobs,
                "hindsight_knob": h.knob if h else None,
                "hindsight_gpu_hours": round(h.gpu_hours, 2) if h else None,
                "hindsight_attainment": round(h.slo_attainment, 5) if h else None,
            }
        )
    for name in v.policies():
        tuned, pooled = v.pooled_tuned(name), v.pooled_hindsight.get(name)
        out.append(
            {
                "kind": "pooled",
                "policy": name,
                "tuned_gpu_hours": round(tuned.gpu_hours, 2),
                "tuned_attainment": round(tuned.attainment, 5),
                "test_jobs": tuned.jobs,
                "hindsight_knob": pooled.knob if pooled else None,
                "hindsight_gpu_hours": round(pooled.gpu_hours, 2) if pooled else None,
                "hindsight_attainment": round(pooled.attainment, 5) if pooled else None,
            }
        )
    return out
