"""Shared GPUs in the simulator: GPU-hours at the same SLO attainment, whole GPUs against shares.

Each policy's sweep grid (`swell`; `queue-length` and `concurrency` at target 1, their best
tunings) runs on whole GPUs and on GPUs shared 2 and 3 ways (`PoolConfig.gpu_shares`, each share
at `share_gain / shares` of a GPU's speed: 0.568 and 0.378 with the seed's default gain of
1 / 0.881). Printed: the cheapest point of each that reaches the target attainment, and its
GPU-hours against the same policy on whole GPUs measured in the same run.

    .venv/bin/python bench/sim_share.py ../shared/data/sd_requests_2024-11-15_to_11-27.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from swell.brain.policies import POLICIES
from swell.sim.cluster import PoolConfig
from swell.sim.report import Report
from swell.sim.sweep import Point, cheapest_at, run_points
from swell.sim.trace import read_trace

GRIDS = {
    "swell": POLICIES["swell"].grid,
    "queue-length": tuple(k for k in POLICIES["queue-length"].grid if k["target"] == 1),
    "concurrency": tuple(k for k in POLICIES["concurrency"].grid if k["target"] == 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--shares", default="1,2,3", help="GPU shares to compare (1 first)")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--gain", type=float, default=PoolConfig().share_gain)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    trace = read_trace(args.trace)
    shares = [int(s) for s in args.shares.split(",")]
    points = [Point(trace, name, dict(k)) for name, grid in GRIDS.items() for k in grid]
    best: dict[tuple[str, int], Report | None] = {}
    started = time.monotonic()
    for k in shares:
        pool = PoolConfig(gpu_shares=k, share_gain=args.gain if k > 1 else PoolConfig().share_gain)
        reports = run_points(points, pool, jobs=args.jobs)
        for name in GRIDS:
            best[name, k] = cheapest_at((r for r in reports if r.policy == name), args.target)
        print(f"shares={k} done ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    print(
        f"| policy | GPU shares | cheapest point at >= {args.target:.0%} | SLO att. | p99 wait (s) | "
        "GPU-hours | peak GPUs | x whole GPUs |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for name in GRIDS:
        whole = best.get((name, shares[0]))
        for k in shares:
            r = best[name, k]
            if r is None:
                print(f"| {name} | {k} | not reached | | | | | |")
                continue
            ratio = f"{r.gpu_hours / whole.gpu_hours:.2f}x" if whole else ""
            print(
                f"| {name} | {k} | {r.knob} | {r.slo_attainment:.2%} | {r.p99_wait_s:.1f} | "
                f"{r.gpu_hours:.1f} | {r.peak_gpus} | {ratio} |"
            )


if __name__ == "__main__":
    main()
