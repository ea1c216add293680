"""Filling the valleys in the simulator: batch GPU-hours absorbed, interactive SLO with and without.

Each policy replays the image trace alone, then with a synthetic batch backlog (`--backlog`
GPU-hours of whole-GPU work queued at the start, in `--chunk`-second chunks) that runs only on
replicas interactive work leaves idle and is handed back `--handback` seconds after interactive work
needs the replica (`PoolConfig.batch_*`, `handback_seconds`). Printed: a Markdown table, one row per
run, the interactive figures beside those of the same policy alone in the same run. `--plot DAY`
draws that day of the first policy's run with the largest backlog (`swell.sim.plot.plot_day`).

    .venv/bin/python bench/sim_batch.py ../shared/data/sd_requests_2024-11-15_to_11-27.csv \
        --backlog 200,2000 --plot 10 --out docs/img/sim_day_batch.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from swell.brain.policies import make_policy
from swell.sim.cluster import PoolConfig
from swell.sim.engine import Simulator
from swell.sim.trace import read_trace

POLICIES = {  # the default `swell`, and the best tuning of `queue-length` at 99 % on this trace
    "swell": {},
    "queue-length": {"target": 1, "cooldown": 28800},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--backlog", default="500,5000", help="batch GPU-hours to try (comma-separated)")
    parser.add_argument("--chunk", type=float, default=60.0)
    parser.add_argument("--handback", type=float, default=2.0)
    parser.add_argument("--shares", type=int, default=1)
    parser.add_argument("--plot", type=int, default=None, help="draw this day (0-based) of a run")
    parser.add_argument("--out", type=Path, default=Path("docs/img/sim_day_batch.png"))
    args = parser.parse_args()
    trace = read_trace(args.trace)
    backlogs = [float(b) for b in args.backlog.split(",")]
    print(
        "| policy | batch backlog (GPU-h) | interactive SLO att. | alone | p99 wait (s) | alone | "
        "GPU-hours | alone | batch absorbed (GPU-h) | lost to hand-backs (GPU-h) | hand-backs |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    drawn = None
    for name, knobs in POLICIES.items():
        base = PoolConfig(gpu_shares=args.shares)
        alone = Simulator(trace, make_policy(name, **knobs), base).run()
        for backlog in backlogs:
            pool = PoolConfig(
                gpu_shares=args.shares,
                batch_gpu_hours=backlog,
                batch_chunk_seconds=args.chunk,
                handback_seconds=args.handback,
            )
            sim = Simulator(trace, make_policy(name, **knobs), pool)
            r = sim.run()
            print(
                f"| {name} | {backlog:g} | {r.slo_attainment:.2%} | {alone.slo_attainment:.2%} | "
                f"{r.p99_wait_s:.1f} | {alone.p99_wait_s:.1f} | {r.gpu_hours:.1f} | {alone.gpu_hours:.1f} | "
                f"{sim.batch_done_s / 3600:.1f} | {sim.batch_lost_s / 3600:.1f} | {sim.handbacks} |",
                flush=True,
            )
            if drawn is None and backlog == max(backlogs):
                drawn = (sim, r)
    if args.plot is not None and drawn is not None:
        from swell.sim.plot import plot_day

        sim, report = drawn
        plot_day(report, sim.batch_samples, args.out, day=args.plot)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
