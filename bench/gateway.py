"""End-to-end speed of the serving path: gateway -> SQLite queue -> worker processes -> result.

Starts `swell up` (a real process, real workers) with a `callable` engine that does no work
(`builtins:dict` copies the input), then measures:

1. throughput: N jobs submitted over 32 keep-alive connections; jobs/s from the first submit until
   the server reports every job succeeded;
2. acknowledgement latency: an open-loop load of R submits/s for D seconds (each request sent at its
   scheduled time whatever the others do); p50/p99/max of the time to the 202, and the failures.

The same two measurements run against a peer a user would otherwise pick for an embedded,
Python-only job queue behind an HTTP API: FastAPI + huey's SqliteHuey with a huey consumer
(`--peer huey`; skipped with a note when huey is not installed).

    python bench/gateway.py [--jobs 5000] [--rate 200] [--duration 20] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
SETTLE_SECONDS = 3.0  # between the throughput burst and the steady load (WAL checkpoint, idle workers)


@dataclass
class Result:
    system: str
    jobs: int
    jobs_per_s: float
    ack_rate: float
    ack_p50_ms: float
    ack_p99_ms: float
    ack_max_ms: float
    ack_errors: dict[str, int]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


@contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- Swell --------------------------------------------------------------------------------------------


@contextmanager
def swell_server(workdir: Path, workers: int, batch: int) -> Iterator[tuple[str, dict[str, str]]]:
    config = workdir / "swell.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        services:
          - name: noop
            engine: callable
            options: {{function: "builtins:dict"}}
            replicas: {{min: {workers}, max: {workers}}}
            max_batch_size: {batch}
            queue_limit: 1000000
        brain: {{mode: "off"}}
        """)
    )
    port = free_port()
    env = {**os.environ, "SWELL_API_KEY": "bench-key", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "swell",
        "up",
        "--config",
        str(config),
        "--data-dir",
        str(workdir / "data"),
        "--port",
        str(port),
    ]
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer bench-key"}
    with process(cmd, env, workdir / "swell.log"):

        def ready() -> bool:
            services = httpx.get(f"{base}/v1/services", headers=headers, timeout=2).json()["services"]
            replicas = [r for s in services for r in s["replicas"]]
            return len(replicas) >= workers and all(r["state"] in ("ready", "busy") for r in replicas)

        wait_until(ready, 120, "swell workers")
        yield base, headers


def swell_done(base: str, headers: dict[str, str], expected: int) -> bool:
    services = httpx.get(f"{base}/v1/services", headers=headers, timeout=10).json()["services"]
    depth = next(s for s in services if s["name"] == "noop")["queue"]
    return int(depth.get("succeeded", 0)) >= expected


# -- peer: FastAPI + huey (SqliteHuey) ----------------------------------------------------------------

HUEY_APP = """
import os
from fastapi import FastAPI
from huey import SqliteHuey

huey = SqliteHuey(filename=os.environ["BENCH_HUEY_DB"])

@huey.task()
def noop(payload):
    return dict(payload)

app = FastAPI()

@app.post("/v1/jobs")
def submit(body: dict):
    result = noop(body["input"])
    return {"id": result.id, "state": "queued"}

@app.get("/done")
def done():
    return {"pending": huey.pending_count(), "results": huey.result_count()}
"""


@contextmanager
def huey_server(workdir: Path, workers: int) -> Iterator[tuple[str, dict[str, str]]]:
    (workdir / "huey_app.py").write_text(HUEY_APP)
    port = free_port()
    env = {**os.environ, "BENCH_HUEY_DB": str(workdir / "huey.db"), "PYTHONPATH": str(workdir)}
    api = [
        sys.executable,
        "-m",
        "uvicorn",
        "huey_app:app",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    consumer = [
        sys.executable,
        "-m",
        "huey.bin.huey_consumer",
        "huey_app.huey",
        "-k",
        "process",
        "-w",
        str(workers),
        "-d",
        "0.001",
        "-m",
        "0.01",
        "-q",
    ]
    base = f"http://127.0.0.1:{port}"
    with process(api, env, workdir / "huey_api.log"), process(consumer, env, workdir / "huey_consumer.log"):
        wait_until(lambda: httpx.get(f"{base}/done", timeout=2).status_code == 200, 60, "huey api")
        yield base, {}


def huey_done(base: str, headers: dict[str, str], expected: int) -> bool:
    body = httpx.get(f"{base}/done", timeout=10).json()
    return int(body["results"]) >= expected


# -- the two measurements, shared -----------------------------------------------------------------------
#
# The load comes from a lean HTTP/1.1 client (keep-alive connections, each request one write and one
# read) rather than httpx: on two cores shared with the server and its workers, httpx spends more CPU
# per request than the gateway does, and a benchmark of the client is not what we want.


Done = Callable[[str, dict[str, str], int], bool]


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads back the status."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    @classmethod
    async def open(cls, base: str, headers: dict[str, str]) -> Connection:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}"
        return cls(reader, writer, head.encode())

    async def post(self, body: bytes) -> int:
        self.writer.write(b"%sContent-Length: %d\r\n\r\n%s" % (self.head, len(body), body))
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def job_body(i: int) -> bytes:
    return b'{"service":"noop","input":{"i":%d}}' % i


async def throughput(
    base: str, headers: dict[str, str], jobs: int, expected: int, done: Done, concurrency: int = 32
) -> float:
    """Jobs/s from the first submit of `jobs` until `expected` jobs in all have finished."""
    connections = [await Connection.open(base, headers) for _ in range(concurrency)]
    numbers = iter(range(jobs))

    async def client(connection: Connection) -> None:
        for i in numbers:
            status = await connection.post(job_body(i))
            if status >= 300:
                raise RuntimeError(f"submit answered {status}")

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
    for connection in connections:
        connection.close()
    while not await asyncio.to_thread(done, base, headers, expected):
        await asyncio.sleep(0.02)
    return jobs / (time.perf_counter() - start)


async def ack_latency(
    base: str, headers: dict[str, str], rate: float, duration: float
) -> tuple[list[float], dict[str, int]]:
    """Open loop: request i leaves at start + i/rate whatever the others do, on an idle connection
    (a new one when every connection is waiting), so a slow answer cannot delay the next request.
    Returns the latencies of the accepted submits and the count of each kind of failure."""
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    # first in, first out: every connection is reused well within the server's keep-alive timeout
    idle = collections.deque([await Connection.open(base, headers) for _ in range(16)])

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        connection = idle.popleft() if idle else None
        try:
            connection = connection or await Connection.open(base, headers)
            status = await connection.post(job_body(i))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors[type(exc).__name__] += 1
            if connection is not None:
                connection.close()
            return
        if status < 300:
            latencies.append(time.perf_counter() - t0)
        else:
            errors[f"HTTP {status}"] += 1
        idle.append(connection)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * duration)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    for connection in idle:
        connection.close()
    return latencies, dict(errors)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure(system: str, server: Callable[[Path], Any], done: Done, args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"bench-{system}-") as tmp, server(Path(tmp)) as (base, headers):
        # warm up connections and the workers' first leases
        asyncio.run(throughput(base, headers, 200, 200, done))
        rate = asyncio.run(throughput(base, headers, args.jobs, 200 + args.jobs, done))
        time.sleep(SETTLE_SECONDS)  # the steady load starts once the burst's aftermath is over
        latencies, errors = asyncio.run(ack_latency(base, headers, args.rate, args.duration))
    ms = [x * 1000 for x in latencies]
    return Result(
        system,
        args.jobs,
        round(rate, 1),
        args.rate,
        round(statistics.median(ms), 2),
        round(percentile(ms, 0.99), 2),
        round(max(ms), 2),
        errors,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--peer", choices=["huey", "none"], default="huey")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results = [measure("swell", lambda d: swell_server(d, args.workers, args.batch), swell_done, args)]
    if args.peer == "huey":
        try:
            import huey  # noqa: F401
        except ImportError:
            print("peer huey skipped: pip install huey", file=sys.stderr)
        else:
            results.append(
                measure("fastapi+huey(sqlite)", lambda d: huey_server(d, args.workers), huey_done, args)
            )
    report(results, args.json)


def report(results: list[Result], as_json: bool) -> None:
    if as_json:
        for r in results:
            print(json.dumps(asdict(r)))
        return
    swell = results[0]
    print(f"{'system':24} {'jobs/s':>9} {'ack p50 ms':>11} {'ack p99 ms':>11} {'ack max ms':>11}  errors")
    for r in results:
        errors = ", ".join(f"{n} {kind}" for kind, n in sorted(r.ack_errors.items())) or "0"
        print(
            f"{r.system:24} {r.jobs_per_s:9.1f} {r.ack_p50_ms:11.2f} {r.ack_p99_ms:11.2f}"
            f" {r.ack_max_ms:11.2f}  {errors}"
        )
    for r in results[1:]:
        print(
            f"swell / {r.system}: throughput x{swell.jobs_per_s / r.jobs_per_s:.2f}, "
            f"ack p99 x{r.ack_p99_ms / swell.ack_p99_ms:.2f} lower"
        )


if __name__ == "__main__":
    main()
