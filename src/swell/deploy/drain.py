"""`python -m swell.deploy.drain`: the preStop hook of a Ray worker pod, run before Kubernetes sends
SIGTERM to the pod (a scale-down, a node drain, a Spot interruption handler's cordon and evict).

It asks Ray to drain this node (`ray drain-node`, reason preemption, with the deadline the grace
period leaves) so that no new replica is placed here, then sends SIGTERM to every Swell worker in
the container (`python -m swell.worker`, the processes the Ray backend's actors hold) and waits
until they have exited or `--timeout` has passed. A worker that gets SIGTERM stops leasing,
finishes what fits in its own drain time and hands the rest back to the queue
(swell.worker.__main__), so the jobs it held run elsewhere at once instead of waiting for their
leases to expire. The report (one JSON line on stdout, which the kubelet records as the hook's
output on failure) says how many were signalled, how many exited and how long it took.

The container's PID namespace bounds what it can see: only this pod's workers are signalled. The
Ray step is best effort (a head that is gone must not keep a pod from draining its workers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

WORKER_MODULE = ("-m", "swell.worker")
RAY_ADDRESS_ENV = "SWELL_RAY_GCS_ADDRESS"  # host:port of the head's GCS, set in the worker pods
RAY_STEP_SECONDS = 10.0  # the most the `ray drain-node` call may take
POLL_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class DrainReport:
    signalled: int
    exited: int
    left: int
    seconds: float
    ray: str  # what the Ray step did: "drained", "skipped" or why it failed


def is_worker(argv: list[str]) -> bool:
    """Whether a command line is a Swell worker's: `<python> [-u] -m swell.worker ...`."""
    if not argv or not Path(argv[0]).name.startswith("python"):
        return False
    return any(tuple(argv[i : i + 2]) == WORKER_MODULE for i in range(1, min(len(argv), 4)))


def worker_pids(proc: Path = Path("/proc")) -> list[int]:
    """The live Swell workers this process can see, by their command lines in /proc."""
    return sorted(pid for pid in _pids(proc) if _alive(proc, pid) and is_worker(_argv(proc, pid)))


def drain(
    pids: Iterable[int],
    timeout: float,
    *,
    proc: Path = Path("/proc"),
    send: Callable[[int, int], None] = os.kill,
    clock: Callable[[], float] = time.monotonic,
    ray: str = "skipped",
) -> DrainReport:
    """SIGTERM each of `pids`, then wait up to `timeout` seconds for all of them to exit."""
    started = clock()
    signalled = [pid for pid in pids if _signal(send, pid)]
    waiting = set(signalled)
    while waiting and clock() - started < timeout:
        waiting = {pid for pid in waiting if _alive(proc, pid)}
        if waiting:
            time.sleep(POLL_SECONDS)
    return DrainReport(
        signalled=len(signalled),
        exited=len(signalled) - len(waiting),
        left=len(waiting),
        seconds=round(clock() - started, 3),
        ray=ray,
    )


def drain_ray_node(address: str | None, deadline_seconds: float) -> str:
    """Ask Ray's GCS to drain this node (no new actors here); what happened, in a few words."""
    if not address:
        return "skipped"
    command = [
        *_ray_command(),
        "drain-node",
        "--address",
        address,
        "--reason",
        "DRAIN_NODE_REASON_PREEMPTION",
        "--reason-message",
        "swell: the pod is stopping",
        "--deadline-remaining-seconds",
        str(max(int(deadline_seconds), 0)),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=RAY_STEP_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"failed: {type(exc).__name__}"
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"failed: exit {done.returncode}: {last[0][:200]}"
    return "drained"


def main(argv: list[str] | None = None) -> int:
    """Drain this container's workers; exit 0 when all exited in time, 1 when some are left."""
    ns = _parser().parse_args(argv)
    ray = "skipped" if ns.no_ray else drain_ray_node(os.environ.get(RAY_ADDRESS_ENV), ns.timeout)
    report = drain(worker_pids(ns.proc), ns.timeout, proc=ns.proc, ray=ray)
    sys.stdout.write(json.dumps(asdict(report)) + "\n")
    return 0 if report.left == 0 else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m swell.deploy.drain", description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, required=True, help="seconds to wait for the workers")
    parser.add_argument("--no-ray", action="store_true", help="do not ask Ray to drain the node")
    parser.add_argument("--proc", type=Path, default=Path("/proc"), help="the proc filesystem to scan")
    return parser


def _ray_command() -> list[str]:
    ray = Path(sys.executable).with_name("ray")
    return [str(ray)] if ray.is_file() else [sys.executable, "-m", "ray.scripts.scripts"]


def _pids(proc: Path) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(entry.name) for entry in proc.iterdir() if entry.name.isdigit()]
    return []


def _argv(proc: Path, pid: int) -> list[str]:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").rstrip("\0").split("\0")


def _alive(proc: Path, pid: int) -> bool:
    """Whether `pid` still runs: it exists and is no zombie (an exited child its parent has not
    reaped yet has done all it will do)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _signal(send: Callable[[int, int], None], pid: int) -> bool:
    try:
        send(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
