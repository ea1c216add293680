"""Every policy across its knob grid on an Azure LLM trace, in the LLM simulator (`swell.sim.llm`).

    .venv/bin/python bench/sim_llm.py ../shared/data/azure_llm_code_2023-11-16.csv --slo 2,10

For each TTFT SLO it runs each policy of `POLICIES` at every point of its grid (the guarded stack,
as live), then prints Markdown: the cheapest point of each policy reaching `--target` attainment
(or its best attainment when none does) and every point. `--json FILE` also writes one JSON line
per run. Every run starts with `--initial` replicas already serving (the hour is a slice of a
running service); `--initial 0` starts from an empty pool, as the image simulator does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from swell.brain.policies import POLICIES, knob_label, make_policy
from swell.sim.llm import LlmEngine, llm_pool, simulate_llm
from swell.sim.llm_trace import LlmTrace, read_llm_trace


def sweep(trace: LlmTrace, names: list[str], slo: float, initial: int) -> list[dict[str, Any]]:
    pool, engine, rows = llm_pool(slo_wait=slo), LlmEngine(), []
    points = [(name, dict(knobs)) for name in names for knobs in POLICIES[name].grid]
    started = time.monotonic()
    for done, (name, knobs) in enumerate(points, start=1):
        report = simulate_llm(
            trace, make_policy(name, **knobs), engine, pool, knob=knob_label(knobs), initial_replicas=initial
        )
        rows.append(report.to_json())
        print(
            f"[{done}/{len(points)}] ttft<={slo:g}s {name} {knob_label(knobs)}: "
            f"{report.slo_attainment:.2%}, {report.gpu_hours:.2f} GPU-h ({time.monotonic() - started:.0f} s)",
            file=sys.stderr,
        )
    return rows


def cheapest(rows: list[dict[str, Any]], policy: str, target: float) -> dict[str, Any] | None:
    meeting = [r for r in rows if r["policy"] == policy and r["slo_attainment"] >= target]
    return min(meeting, key=lambda r: r["gpu_hours"]) if meeting else None


def summary(rows: list[dict[str, Any]], target: float) -> list[str]:
    ours = cheapest(rows, "swell", target)
    out = [
        f"| policy | cheapest point at >= {target:.0%} | SLO att. | TTFT p50 / p99 (s) | e2e p99 (s) | "
        "GPU-hours | x swell's |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for policy in dict.fromkeys(r["policy"] for r in rows):
        best = cheapest(rows, policy, target)
        if best is None:
            top = max((r for r in rows if r["policy"] == policy), key=lambda r: r["slo_attainment"])
            out.append(
                f"| {policy} | not reached (best {top['slo_attainment']:.2%} at {top['knob']}, "
                f"{top['gpu_hours']:.2f} GPU-h) | | | | | |"
            )
            continue
        ratio = f"{best['gpu_hours'] / ours['gpu_hours']:.2f}x" if ours else ""
        out.append(
            f"| {policy} | {best['knob']} | {best['slo_attainment']:.2%} | {best['p50_wait_s']:.2f} / "
            f"{best['p99_wait_s']:.2f} | {best['p99_e2e_s']:.2f} | {best['gpu_hours']:.2f} | {ratio} |"
        )
    return out


def points(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| policy | knob | SLO att. | TTFT att. | TTFT p50 / p99 (s) | queue p99 (s) | TPOT p99 (s) | "
        "GPU-h | busy / start / load / idle GPU-h | peak GPUs | scale actions |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['policy']} | {r['knob']} | {r['slo_attainment']:.2%} | {r['ttft_attainment']:.2%} | "
            f"{r['p50_wait_s']:.2f} / {r['p99_wait_s']:.2f} | {r['p99_queue_s']:.2f} | "
            f"{r['p99_tpot_s']:.3f} | {r['gpu_hours']:.2f} | {r['work_gpu_hours']:.2f} / "
            f"{r['starting_gpu_hours']:.2f} / {r['loading_gpu_hours']:.2f} / {r['idle_gpu_hours']:.2f} | "
            f"{r['peak_gpus']} | {r['scale_actions']} |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Policies on an Azure LLM trace, simulated.")
    parser.add_argument("trace", type=Path)
    parser.add_argument("--slo", default="2,10", help="TTFT SLOs (s), comma-separated")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--initial", type=int, default=2, help="replicas serving when the trace starts")
    parser.add_argument("--policy", default="all", help="all or a comma-separated list")
    parser.add_argument("--points", action="store_true", help="print every point too")
    parser.add_argument("--json", type=Path, help="write one JSON line per run here")
    args = parser.parse_args()
    trace = read_llm_trace(args.trace)
    names = list(POLICIES) if args.policy == "all" else args.policy.split(",")
    engine = LlmEngine()
    print(
        f"{trace.name}: {len(trace)} requests over {trace.span / 60:.0f} min, "
        f"{int(trace.prompt.sum()):,} prompt and {int(trace.output.sum()):,} generated tokens; "
        f"nominal batch {engine.nominal_slots(trace)}; {args.initial} replicas at the start\n"
    )
    out = args.json.open("w") if args.json else None
    for slo in (float(x) for x in args.slo.split(",")):
        rows = sweep(trace, names, slo, args.initial)
        if out:
            out.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"TTFT SLO {slo:g} s, TPOT SLO {engine.tpot_slo:g} s:\n")
        print("\n".join(summary(rows, args.target)))
        if args.points:
            print("\n" + "\n".join(points(rows)))
        print()
    if out:
        out.close()


if __name__ == "__main__":
    main()
