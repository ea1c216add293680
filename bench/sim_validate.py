"""Markdown tables for docs/benchmarks.md from `swell sim validate --json` output (one or more files:
rows of the same folds, e.g. the baselines and `swell` run separately, are merged).

    swell sim validate --trace ../shared/data/sd_requests_2024-11-15_to_11-27.csv --jobs 2 --json \
        > validate.jsonl
    .venv/bin/python bench/sim_validate.py validate.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PEERS = ("queue-length", "concurrency", "clairvoyant")


def folds_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| fold | policy | setting tuned on the tune days | tune GPU-h / att. | test GPU-h / att. | "
        "cheapest on the test days (hindsight) |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        hindsight = (
            f"{r['hindsight_knob']}: {r['hindsight_gpu_hours']:.1f} / {r['hindsight_attainment']:.2%}"
            if r["hindsight_knob"] is not None
            else "not reached"
        )
        out.append(
            f"| {r['fold']} | {r['policy']} | {r['knob']} | {r['tune_gpu_hours']:.1f} / "
            f"{r['tune_attainment']:.2%} | {r['test_gpu_hours']:.1f} / {r['test_attainment']:.2%} | "
            f"{hindsight} |"
        )
    return out


def pooled_table(rows: list[dict[str, Any]], ours: str) -> list[str]:
    mine = next((r for r in rows if r["policy"] == ours), None)
    out = [
        f"| policy | tuned per fold: test GPU-h / att. | x {ours}'s | one sweep over the test days: "
        f"cheapest >= target | GPU-h / att. | x {ours}'s |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        tuned = _ratio(mine["tuned_gpu_hours"] if mine else None, r["tuned_gpu_hours"])
        if r["hindsight_knob"] is None:
            hind, score, hratio = "not reached", "", ""
        else:
            hind = str(r["hindsight_knob"])
            score = f"{r['hindsight_gpu_hours']:.1f} / {r['hindsight_attainment']:.2%}"
            hratio = _ratio(mine["hindsight_gpu_hours"] if mine else None, r["hindsight_gpu_hours"])
        out.append(
            f"| {r['policy']} | {r['tuned_gpu_hours']:.1f} / {r['tuned_attainment']:.2%} | {tuned} | "
            f"{hind} | {score} | {hratio} |"
        )
    return out


def ratios(folds: list[dict[str, Any]], pooled: list[dict[str, Any]], ours: str) -> list[str]:
    """`ours` against each peer: per fold (tuned settings on the test days) and pooled."""
    by = {(r["fold"], r["policy"]): r for r in folds}
    out = [f"| fold | {' | '.join(f'{ours} / {p}' for p in PEERS)} |", "|---|" + "---:|" * len(PEERS)]
    for fold in dict.fromkeys(r["fold"] for r in folds):
        mine = by.get((fold, ours))
        cells = [
            _ratio(by[(fold, p)]["test_gpu_hours"], mine["test_gpu_hours"])
            if mine and (fold, p) in by
            else ""
            for p in PEERS
        ]
        out.append(f"| {fold} | {' | '.join(cells)} |")
    pool = {r["policy"]: r for r in pooled}
    for key, label in (("tuned_gpu_hours", "pooled, tuned"), ("hindsight_gpu_hours", "pooled, hindsight")):
        mine = pool.get(ours, {}).get(key)
        cells = [_ratio(pool[p].get(key) if p in pool else None, mine) for p in PEERS]
        out.append(f"| {label} | {' | '.join(cells)} |")
    return out


def _ratio(base: float | None, value: float | None) -> str:
    return f"{value / base:.2f}x" if base and value is not None else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description="Markdown tables from `swell sim validate --json`.")
    parser.add_argument("jsonl", type=Path, nargs="+")
    parser.add_argument("--ours", default="swell")
    args = parser.parse_args()
    rows = [
        json.loads(line) for p in args.jsonl for line in p.read_text().splitlines() if line.startswith("{")
    ]
    folds = [r for r in rows if r["kind"] == "fold"]
    order = {f: i for i, f in enumerate(dict.fromkeys(r["fold"] for r in folds))}
    folds.sort(key=lambda r: order[r["fold"]])  # stable: each file's policies stay in their order
    pooled = [r for r in rows if r["kind"] == "pooled"]
    print("\n".join(folds_table(folds)))
    print()
    print("\n".join(pooled_table(pooled, args.ours)))
    print()
    print("\n".join(ratios(folds, pooled, args.ours)))


if __name__ == "__main__":
    main()
