"""Does `swell` hold when demand gets harder? Its sweep on the test days of `swell sim validate`'s
folds (each window from an empty pool, all windows pooled), with and without the online adaptation
(`max_pressure=0` holds the keep-alive fixed, as the first version did), at the trace's speed and
replayed faster (`--speeds`; 2: the same jobs in half the time, burstier than any day seen).

    .venv/bin/python bench/sim_robust.py ../shared/data/sd_requests_2024-11-15_to_11-27.csv --jobs 2
"""

from __future__ import annotations

import argparse

from swell.brain.policies import POLICIES
from swell.sim.cluster import PoolConfig
from swell.sim.sweep import Point, run_points
from swell.sim.trace import read_trace
from swell.sim.validate import Score, day_starts, folds, origin_clock, window

VARIANTS: tuple[tuple[str, dict[str, float]], ...] = (
    ("adaptive", {}),
    ("fixed keep-alive (max_pressure=0)", {"max_pressure": 0.0}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description="swell's sweep on the test days, adaptive or not.")
    parser.add_argument("trace")
    parser.add_argument("--speeds", default="1,2")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    trace = read_trace(args.trace)
    starts = day_starts(trace.span, origin_clock(args.trace))
    tests = [window(trace, starts, f.test) for f in folds(len(starts))]
    grid = POLICIES["swell"].grid
    cases = [(float(s), v, k) for s in args.speeds.split(",") for v in VARIANTS for k in grid]
    points = [Point(w.scaled(s), "swell", {**k, **extra}) for s, (_, extra), k in cases for w in tests]
    reports = run_points(points, PoolConfig(), jobs=args.jobs)
    print("| speed | swell | keep_alive | SLO att. (pooled) | GPU-h (pooled) |")
    print("|---:|---|---:|---:|---:|")
    for i, (speed, (label, _), knobs) in enumerate(cases):
        score = Score.of(reports[i * len(tests) : (i + 1) * len(tests)])
        cells = f"{knobs['keep_alive']:g} | {score.attainment:.2%} | {score.gpu_hours:.1f}"
        print(f"| {speed:g} | {label} | {cells} |")


if __name__ == "__main__":
    main()
