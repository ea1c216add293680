"""Why no online policy gets near the clairvoyant one on a bursty trace: surprises.

Start every job on arrival on its own GPU (the ideal schedule) and give each job its level: how many
jobs run at its arrival, itself included. A policy that must ask for a GPU `lead` seconds ahead (GPU
start plus a load from the store) only knows the past; a job is a *surprise* for a memory of `W`
seconds when its level is above every level seen in `[arrival - lead - W, arrival - lead]`. Serving a
surprise within the SLO needs capacity above the trailing peak of the last `W` seconds, held in
advance. The table gives the share of surprise jobs for several `W`: at 99 % attainment a policy may
miss 1 %, so any `W` whose share is above 1 % is a memory too short to reach the target even with
perfect knowledge of that past peak (the 30 s SLO wait lets a few surprises queue briefly instead).

    .venv/bin/python bench/sim_bound.py ../shared/data/sd_requests_2024-11-15_to_11-27.csv
    .venv/bin/python bench/sim_bound.py ../shared/data/sd_requests_2024-11-15_to_11-27.csv --days 6-7,8-9

`--days` takes windows of days as `swell sim validate` cuts them (at `--cut-hour`), each replayed
on its own: the share of surprises on days a policy was not tuned on.
"""

from __future__ import annotations

import argparse

import numpy as np

from swell.sim.cluster import PoolConfig, Tier
from swell.sim.trace import Trace, read_trace
from swell.sim.validate import day_starts, origin_clock, window

MEMORIES = (600, 1800, 3600, 7200, 14400, 28800)


def levels(arrival: np.ndarray, service: np.ndarray) -> np.ndarray:
    """Jobs running at each arrival in the ideal schedule, the arriving job included."""
    ends = np.sort(arrival + service)
    started = np.arange(1, len(arrival) + 1)
    return started - np.searchsorted(ends, arrival, side="right")


def surprises(arrival: np.ndarray, level: np.ndarray, lead: float, memory: float) -> int:
    lo = np.searchsorted(arrival, arrival - lead - memory, side="left")
    hi = np.searchsorted(arrival, arrival - lead, side="right")
    count = 0
    for i in range(len(arrival)):
        if hi[i] <= lo[i] or level[i] > level[lo[i] : hi[i]].max():
            count += 1
    return count


def table(traces: list[Trace], lead: float) -> None:
    """Surprise jobs per memory, over all `traces` together."""
    jobs = sum(len(t) for t in traces)
    level = [levels(t.arrival, t.service) for t in traces]
    names = ", ".join(t.name for t in traces)
    print(f"{names}: {jobs} jobs, lead {lead:.0f} s, peak level {max(int(v.max()) for v in level)}")
    print("| memory W | surprise jobs | share |")
    print("|---:|---:|---:|")
    for memory in MEMORIES:
        n = sum(surprises(t.arrival, v, lead, memory) for t, v in zip(traces, level, strict=True))
        print(f"| {memory / 60:.0f} min | {n} | {n / jobs:.2%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description="Share of jobs above the trailing peak (surprises).")
    parser.add_argument("trace")
    parser.add_argument("--days", help="Comma-separated windows of days, e.g. 6-7,8-9 (default: all).")
    parser.add_argument("--cut-hour", type=float, default=12.0)
    args = parser.parse_args()
    trace = read_trace(args.trace)
    pool = PoolConfig()
    lead = pool.gpu_start_seconds + pool.load_seconds(Tier.REMOTE)
    traces = [trace]
    if args.days:
        starts = day_starts(trace.span, origin_clock(args.trace), args.cut_hour)
        spans = [tuple(int(d) for d in w.split("-")) for w in args.days.split(",")]
        traces = [window(trace, starts, (w[0], w[-1])) for w in spans]
    table(traces, lead)


if __name__ == "__main__":
    main()
