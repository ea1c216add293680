"""Images/s through Swell's AUTOMATIC1111 door, with one worker and with two, against a single-lock
A1111-style server (bench/a1111_peer.py) in the same run.

Every side serves the same tiny random SD model (`swell.models.tiny`: noise in a real layout, so
what is measured is the serving path and its parallelism, not image quality) at `--size` pixels and
`--steps` steps with Euler a, and is driven by `--clients` closed-loop clients posting the same
`/sdapi/v1/txt2img` body (one image each, distinct seeds) until `--requests` images are done:

- `peer`: one pipeline behind one lock (the web UI's model: one global model, one generation at a
  time), torch on `--threads` threads, the whole machine's share;
- `swell-1`, `swell-2`: Swell's gateway (`create_app` under uvicorn with `serving_config`, as `swell
  up` serves it, in its own process) over a SQLite queue, and one or two diffusers worker processes
  (`python -m swell.worker`, as the supervisor starts them), `max_batch_size` 1 so a worker runs one
  image per call as the peer does; the machine's threads split between the workers (`--threads` /
  workers each, through OMP_NUM_THREADS). The processes are started here rather than by `swell up`
  so that the measurement holds the serving path only (no brain, no supervisor restarts).

All three are started first and warmed (one request each); then rounds run the sides in an order
that rotates every round. A side's rate is the median over rounds; each ratio (Swell over the peer)
is taken per round, then its median. Prints a JSON summary and writes bench/out/a1111.json.

    .venv/bin/python bench/a1111.py                  # about 6 minutes on 2 busy cores
    .venv/bin/python bench/a1111.py --quick
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from swell.core.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "a1111.json"
API_KEY = "bench-a1111-key"
READY_TIMEOUT = 300.0
WAIT = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    return "unknown"


@dataclass
class Side:
    """One server under test: its processes (the first serves HTTP on `port`), its log, the headers
    its clients send."""

    name: str
    commands: list[list[str]]
    env: dict[str, str]
    log: Path
    headers: dict[str, str]
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("wb") as log:
            for command in self.commands:
                command = [part.replace("{port}", str(self.port)) for part in command]
                self.procs.append(
                    subprocess.Popen(
                        command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )

    def stop(self) -> None:
        for proc in reversed(self.procs):  # workers first (they drain), the gateway last
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def exited(self) -> int | None:
        return next((proc.returncode for proc in self.procs if proc.poll() is not None), None)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def environment(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWELL_")}
    return env | {"SWELL_API_KEY": API_KEY, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}


def peer_side(args: argparse.Namespace, model: Path, work: Path) -> Side:
    command = [sys.executable, str(ROOT / "bench" / "a1111_peer.py"), "--model", str(model)]
    command += ["--threads", str(args.threads), "--port", "{port}"]
    return Side("peer", [command], environment(args.threads), work / "peer.log", {})


def swell_side(args: argparse.Namespace, model: Path, work: Path, workers: int) -> Side:
    name = f"swell-{workers}"
    options = {"path": str(model), "device": "cpu", "sampler": "Euler a", "steps": args.steps}
    options |= {"width": args.size, "height": args.size}
    service = {
        "name": "sd",
        "engine": "diffusers",
        "options": options,
        "replicas": {"min": workers, "max": workers},
        "max_batch_size": 1,
        "job_timeout": WAIT,
    }
    data = work / name
    data.mkdir()
    config = data / "swell.yaml"
    config.write_text(yaml.safe_dump({"services": [service], "gateway": {"max_wait_seconds": WAIT}}))
    gateway = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve-gateway",
        str(config),
        str(data),
        "{port}",
    ]
    queue = f"sqlite:///{data / 'swell.db'}"
    parsed = json.dumps(parse_config(yaml.safe_load(config.read_text())).services[0].model_dump(mode="json"))
    worker = [
        sys.executable,
        "-m",
        "swell.worker",
        "--queue",
        queue,
        "--service",
        parsed,
        "--data-dir",
        str(data),
    ]
    commands = [gateway, *([*worker, "--replica-id", f"w{i}"] for i in range(workers))]
    threads = max(1, args.threads // workers)
    auth = base64.b64encode(f"bench:{API_KEY}".encode()).decode()  # Basic, as A1111 clients send it
    return Side(name, commands, environment(threads), data / "log", {"Authorization": f"Basic {auth}"})


def serve_gateway(config: str, data: str, port: str) -> None:
    """The gateway alone, as `swell up` serves it: create_app under uvicorn with Swell's limits."""
    import uvicorn

    from swell.core.config import Settings, load_config
    from swell.gateway.app import create_app
    from swell.gateway.protocol import serving_config
    from swell.queue.base import open_queue

    settings = Settings(data_dir=Path(data), api_key=API_KEY)
    app = create_app(load_config(config), settings, open_queue(f"sqlite:///{Path(data) / 'swell.db'}"))
    uvicorn.Server(serving_config(app, "127.0.0.1", int(port), app.state.limits, lifespan="on")).run()


def body(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {
        "prompt": "a lighthouse on a cliff at dawn",
        "negative_prompt": "blurry",
        "seed": seed,
        "steps": args.steps,
        "cfg_scale": 7,
        "width": args.size,
        "height": args.size,
        "sampler_name": "Euler a",
        "batch_size": 1,
        "n_iter": 1,
    }


def generate(client: httpx.Client, side: Side, payload: dict[str, Any]) -> int:
    response = client.post(f"{side.base}/sdapi/v1/txt2img", json=payload, headers=side.headers)
    if response.status_code != 200:
        raise RuntimeError(f"{side.name} answered {response.status_code}: {response.text[:300]}")
    images = response.json()["images"]
    if not images or not base64.b64decode(images[0]).startswith(b"\x89PNG"):
        raise RuntimeError(f"{side.name} answered no PNG")
    return len(images)


def wait_ready(client: httpx.Client, side: Side, args: argparse.Namespace) -> float:
    """Seconds until `side` answers a txt2img (its workers loaded and warm)."""
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT:
        if side.exited() is not None:
            raise RuntimeError(f"{side.name} exited with {side.exited()}:\n{side.tail()}")
        with contextlib.suppress(httpx.HTTPError, RuntimeError):
            generate(client, side, body(args, 0))
            return time.monotonic() - start
        time.sleep(0.5)
    raise RuntimeError(f"{side.name} not ready in {READY_TIMEOUT:g} s:\n{side.tail()}")


def closed_loop(client: httpx.Client, side: Side, args: argparse.Namespace, round_: int) -> float:
    """Images/s for `--clients` closed-loop clients until `--requests` images are done."""
    seeds = [1000 * round_ + i for i in range(args.requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        images = sum(pool.map(lambda seed: generate(client, side, body(args, seed)), seeds))
    return images / (time.perf_counter() - started)


@contextlib.contextmanager
def running(sides: list[Side], client: httpx.Client, args: argparse.Namespace) -> Iterator[None]:
    try:
        for side in sides:
            side.start()
        for side in sides:
            print(f"  {side.name} ready in {wait_ready(client, side, args):.1f} s", flush=True)
        yield
    finally:
        for side in sides:
            side.stop()


def measure(args: argparse.Namespace, model: Path, work: Path) -> dict[str, Any]:
    sides = [peer_side(args, model, work), *(swell_side(args, model, work, n) for n in (1, 2))]
    rates: dict[str, list[float]] = {side.name: [] for side in sides}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    with httpx.Client(timeout=WAIT, limits=limits, trust_env=False) as client, running(sides, client, args):
        for round_ in range(args.rounds):
            order = sides[round_ % len(sides) :] + sides[: round_ % len(sides)]
            for side in order:
                rates[side.name].append(closed_loop(client, side, args, round_ + 1))
            print(
                f"  round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f}/s" for k, v in rates.items()),
                flush=True,
            )
    return summarise(rates)


def summarise(rates: dict[str, list[float]]) -> dict[str, Any]:
    peer = rates["peer"]
    summary: dict[str, Any] = {
        name: {"images_per_s": statistics.median(v), "rounds": v} for name, v in rates.items()
    }
    for name in ("swell-1", "swell-2"):
        ratios = [s / p for s, p in zip(rates[name], peer, strict=True)]
        summary[name]["ratio_vs_peer"] = statistics.median(ratios)
    return summary


def main() -> None:
    if sys.argv[1:2] == ["--serve-gateway"]:
        serve_gateway(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=8, help="images per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads per side")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 4 images")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests = 2, 4
    from swell.models.tiny import make_tiny

    work = Path(tempfile.mkdtemp(prefix="swell-bench-a1111-"))
    try:
        model = make_tiny("sd", work / "sd")
        results = measure(args, model, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "commit": commit(),
        "settings": {k: v for k, v in vars(args).items() if k != "quick"},
        "cpus": os.cpu_count(),
        **results,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
