"""Model affinity on the image trace's checkpoint mix: checkpoint loads per 1,000 jobs and jobs/s.

A contiguous slice of `--jobs` requests of `../shared/data/sd_requests_2024-11-15_to_11-27.csv`
(from row `--start`), keeping the real sequence and mix of `checkpoint_model_version_id`, is
submitted to a fresh SQLite queue as a backlog (every job queued before the workers start, in trace
order), then drained by `--workers` real worker processes (`python -m swell.worker`) of one service
that lists every checkpoint of the slice under `models`. The engine is `SleepyCheckpoint` below:
a load sleeps `--load-seconds` (the same for every checkpoint), a job `--job-seconds`, so what is
measured is the scheduling (how often a worker switches), not a model.

Variants, measured in the same run, one after another on the same slice:

- `a1111`: the A1111-style baseline: each worker holds one model and switches whenever the next
  request in FIFO order names another (`affinity.prefer_held: false`, max_loaded 1: the same
  workers leasing in plain rank order);
- `swell-1`, `swell-2`: Swell's model-affine leasing with `max_loaded` 1 and 2 (held models'
  jobs first, a cold model only when none of them wait, the starvation guard at
  `--max-wait` seconds).

With `--rate R`, the slice is instead submitted while the workers serve, job i at i/R seconds (the
trace's order at a steady rate): fewer jobs wait, so a worker finds fewer of its held models' jobs
queued and switches more; jobs/s is then bound by R, and the latencies (submit to finish, p50 and
p95) tell the variants apart.

Every variant leases one job at a time (`max_batch_size` 1, as A1111 serves one request at a
time). Loads are counted from the workers' status files (`phases`: `loads:MODEL`, which includes
the one preload per worker at start); the clock runs from both workers being ready to the last job
finished. Prints a JSON summary and writes it to bench/out/affinity.json (affinity-rateR.json).

    .venv/bin/python bench/affinity.py                  # about 2 minutes on 2 cores
    .venv/bin/python bench/affinity.py --jobs 300       # quicker
    .venv/bin/python bench/affinity.py --rate 10        # paced arrivals, about 6 minutes
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from swell.core.config import ServiceConfig
from swell.core.jobs import JobSpec, JobState
from swell.engines.base import RunContext
from swell.engines.spec import Options
from swell.queue.base import QueueBackend, open_queue
from swell.worker import contract
from swell.worker.contract import WorkerArgs, WorkerState
from swell.worker.status import status_path

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT.parent / "shared" / "data" / "sd_requests_2024-11-15_to_11-27.csv"
OUT = ROOT / "bench" / "out" / "affinity.json"
ENGINE = "bench.affinity:SleepyCheckpoint"


class SleepyOptions(Options):
    checkpoint: str
    load_seconds: float = 0.2


class SleepyCheckpoint:
    """One checkpoint per engine: `load` sleeps `load_seconds`, a job sleeps its `seconds`."""

    Options = SleepyOptions
    batches = True
    model: str | None

    def __init__(self, checkpoint: str, load_seconds: float = 0.2) -> None:
        self.model = checkpoint
        self.load_seconds = load_seconds

    def load(self) -> dict[str, float]:
        time.sleep(self.load_seconds)
        return {"fetch": 0.0, "load": self.load_seconds, "warmup": 0.0}

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        for item in inputs:
            time.sleep(float(item.get("seconds", 0)))
        return [{"model": self.model} for _ in inputs]

    def unload(self) -> None:
        pass


def trace_models(start: int, count: int) -> list[str]:
    """The checkpoint column of `count` consecutive requests from row `start`."""
    with TRACE.open() as rows:
        models = [row["checkpoint_model_version_id"] for row in csv.DictReader(rows)]
    if start + count > len(models):
        raise SystemExit(f"the trace has {len(models)} requests; --start {start} --jobs {count} is past it")
    return models[start : start + count]


def service_for(models: list[str], args: argparse.Namespace, variant: str) -> ServiceConfig:
    names = list(dict.fromkeys(models))  # first seen first: the default model is the slice's first
    affinity: dict[str, Any] = {"max_wait_seconds": args.max_wait}
    if variant == "a1111":
        affinity.update(prefer_held=False, max_loaded=1)
    else:
        affinity["max_loaded"] = int(variant.split("-")[1])
    return ServiceConfig.model_validate(
        {
            "name": "img",
            "engine": ENGINE,
            "options": {"load_seconds": args.load_seconds},
            "models": {name: {"checkpoint": name} for name in names},
            "affinity": affinity,
            "max_batch_size": 1,
            "lease_seconds": 30.0,
        }
    )


def run_variant(models: list[str], args: argparse.Namespace, variant: str, work: Path) -> dict[str, Any]:
    """Submit the slice as a backlog, drain it with `args.workers` workers, count loads and time."""
    folder = work / variant
    folder.mkdir()
    url = f"sqlite:///{folder / 'q.db'}"
    queue = open_queue(url)
    service = service_for(models, args, variant)
    specs = [JobSpec("img", {"seconds": args.job_seconds}, model=model) for model in models]
    ids = [] if args.rate else [queue.submit(spec)[0].id for spec in specs]
    replicas = [f"{variant}-{i}" for i in range(args.workers)]
    procs = [_spawn(WorkerArgs(service, replica, folder, url)) for replica in replicas]
    try:
        _wait(lambda: all(_ready(folder, r) for r in replicas), 120, "workers ready")
        started = time.monotonic()
        if args.rate:
            ids = _paced(queue, specs, args.rate, started)
        _wait(lambda: _finished(queue, ids), 3600, "every job finished")
        seconds = time.monotonic() - started
        time.sleep(1.5)  # one heartbeat: the status files carry the last load counts
        loads = sum(_loads(folder, r) for r in replicas)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
    done = queue.get_many(ids)
    failed = sum(1 for job in done if job.state is not JobState.SUCCEEDED)
    latency = sorted((job.finished_at or 0) - job.created_at for job in done)
    queue.close()
    return {
        "latency_p50_s": round(statistics.median(latency), 2),
        "latency_p95_s": round(latency[int(0.95 * (len(latency) - 1))], 2),
        "variant": variant,
        "jobs": len(ids),
        "failed": failed,
        "seconds": round(seconds, 2),
        "jobs_per_second": round(len(ids) / seconds, 2),
        "loads": loads,
        "loads_per_1000_jobs": round(1000 * loads / len(ids), 1),
    }


def _paced(queue: QueueBackend, specs: list[JobSpec], rate: float, started: float) -> list[str]:
    """Submit `specs` in order, job i at `started + i / rate` (the trace's order at a steady rate)."""
    ids = []
    for index, spec in enumerate(specs):
        time.sleep(max(0.0, started + index / rate - time.monotonic()))
        ids.append(queue.submit(spec)[0].id)
    return ids


def _spawn(args: WorkerArgs) -> subprocess.Popen[bytes]:
    env = {**os.environ, **args.environment(), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "swell.worker", *args.argv()], env=env, cwd=ROOT, stderr=subprocess.DEVNULL
    )


def _ready(folder: Path, replica: str) -> bool:
    status = contract.load(status_path(folder, replica))
    return status is not None and status.state in (WorkerState.READY, WorkerState.BUSY)


def _finished(queue: QueueBackend, ids: list[str]) -> bool:
    depth = queue.depth().get("img", {})
    return depth.get("queued", 0) == 0 and depth.get("leased", 0) == 0 and sum(depth.values()) == len(ids)


def _loads(folder: Path, replica: str) -> int:
    status = contract.load(status_path(folder, replica))
    phases = status.phases if status is not None else {}
    return int(sum(value for name, value in phases.items() if name.startswith("loads:")))


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=3000, help="first trace row of the slice")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--load-seconds", type=float, default=0.2)
    parser.add_argument("--job-seconds", type=float, default=0.01)
    parser.add_argument("--max-wait", type=float, default=30.0, help="affinity.max_wait_seconds")
    parser.add_argument("--variants", default="a1111,swell-1,swell-2")
    parser.add_argument("--rate", type=float, default=0.0, help="jobs/s submitted while serving (0: backlog)")
    args = parser.parse_args()
    models = trace_models(args.start, args.jobs)
    runs = []
    with tempfile.TemporaryDirectory(prefix="swell-affinity-") as work:
        for variant in args.variants.split(","):
            runs.append(run_variant(models, args, variant, Path(work)))
            print(json.dumps(runs[-1]), flush=True)
    base = next((r for r in runs if r["variant"] == "a1111"), None)
    if base is not None:
        for run in runs:
            run["fewer_loads_than_a1111"] = round(base["loads"] / max(1, run["loads"]), 1)
            run["speed_vs_a1111"] = round(run["jobs_per_second"] / base["jobs_per_second"], 2)
    summary = {
        "trace": TRACE.name,
        "slice": {"start": args.start, "jobs": args.jobs, "checkpoints": len(set(models))},
        "switches_in_sequence": sum(1 for a, b in itertools.pairwise(models) if a != b),
        "settings": {
            k: getattr(args, k) for k in ("workers", "load_seconds", "job_seconds", "max_wait", "rate")
        },
        "runs": runs,
    }
    out = OUT.with_name(f"affinity-rate{args.rate:g}.json") if args.rate else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
