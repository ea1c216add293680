"""Markdown tables for docs/benchmarks.md from `swell sim sweep --json` output.

    swell sim sweep --trace ../shared/data/sd_requests_2024-11-15_to_11-27.csv --json \
        --plot docs/img/sim_frontier_sd.png > sweep.jsonl
    .venv/bin/python bench/sim_sweep.py sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def cheapest(rows: list[dict[str, Any]], policy: str, target: float) -> dict[str, Any] | None:
    meeting = [r for r in rows if r["policy"] == policy and r["slo_attainment"] >= target]
    return min(meeting, key=lambda r: r["gpu_hours"]) if meeting else None


def summary(rows: list[dict[str, Any]], target: float) -> list[str]:
    ours = cheapest(rows, "swell", target)
    out = [
        f"| policy | cheapest point at >= {target:.0%} | SLO att. | p99 wait (s) | GPU-hours | x swell's |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for policy in dict.fromkeys(r["policy"] for r in rows):
        best = cheapest(rows, policy, target)
        if best is None:
            top = max((r for r in rows if r["policy"] == policy), key=lambda r: r["slo_attainment"])
            out.append(
                f"| {policy} | not reached (best {top['slo_attainment']:.2%} at {top['knob']}) | | | | |"
            )
            continue
        saving = f"{best['gpu_hours'] / ours['gpu_hours']:.2f}x" if ours else ""
        out.append(
            f"| {policy} | {best['knob']} | {best['slo_attainment']:.2%} | {best['p99_wait_s']:.1f} | "
            f"{best['gpu_hours']:.1f} | {saving} |"
        )
    return out


def points(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| policy | knob | SLO att. | p50 / p99 wait (s) | GPU-h | start / load / idle GPU-h | "
        "loads host / disk / remote | scale actions | peak GPUs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        loads = r["model_loads"]
        out.append(
            f"| {r['policy']} | {r['knob']} | {r['slo_attainment']:.2%} | {r['p50_wait_s']:.1f} / "
            f"{r['p99_wait_s']:.1f} | {r['gpu_hours']:.1f} | {r['starting_gpu_hours']:.1f} / "
            f"{r['loading_gpu_hours']:.1f} / {r['idle_gpu_hours']:.1f} | {loads['host']} / {loads['disk']} / "
            f"{loads['remote']} | {r['scale_actions']} | {r['peak_gpus']} |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Markdown tables from `swell sim sweep --json`.")
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--target", type=float, default=0.99)
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.startswith("{")]
    print("\n".join(summary(rows, args.target)))
    print()
    print("\n".join(points(rows)))


if __name__ == "__main__":
    main()
