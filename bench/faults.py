"""The serving path under faults and overload, on a machine kept busy: what is lost, dead, run twice.

Starts one CPU burner per core (`--burners`, or none with `--no-burn`), a webhook receiver on loopback
in this process (it checks every signature with `swell.gateway.webhooks.verify`), and a real
`swell up` on a fresh data dir serving `bench/faults.yaml`: the `callable` engine running
`bench/faults_job.py`, 2 replicas, batches of up to 8.

Phase 1, faults. `--jobs` jobs, each with an idempotency key and a callback URL, submitted at a steady
`--rate`; a submit that fails or is refused (connection refused, 5xx, 429) is sent again with the same
key, as a real client would, after its `Retry-After` or a growing back-off. Meanwhile, spread over the
submit window: four worker SIGKILLs (a busy worker when there is one), two SIGKILLs of `swell up` itself,
each followed by a restart on the same data dir, and one worker SIGSTOPped past its lease, then
SIGCONTed. Then it waits until every acknowledged job is final and its webhook has arrived, and counts:
acknowledged, succeeded, lost (acknowledged, then unknown or never final), dead, failed, run twice (the
job ran to its end more than once: it appends to a file per execution), webhook duplicates and missing
webhooks.

Phase 2, overload. The capacity: submits/s the gateway acknowledges for a closed loop of
`--capacity-clients` clients over `--capacity-seconds`. Then `--overload-seconds` of open-loop arrivals
at `--overload-factor` (3) times that rate, each request sent at its scheduled time on an idle
keep-alive connection or a new one, with a client timeout of `--client-timeout` s. It counts 202,
429/503 (with and without `Retry-After`), other statuses, client timeouts and connection errors, and
the p50/p99 latency of accepted submits, from the scheduled send time. The load comes from
`--client-procs` processes, each with a lean HTTP/1.1 client (one write and one read per request), not
httpx: on two cores httpx spends more CPU per request than the gateway (see bench/gateway.py).

Prints a JSON summary, writes it to bench/out/faults.json, and exits 1 when a target is missed:
0 lost, 0 dead, 0 failed, every submit acknowledged, no job created twice for one key, no missing
webhook and no bad signature; under overload every answer a 202 or a 429/503 with `Retry-After`,
0 client timeouts and 0 connection errors. Run twice and webhook duplicates are reported, not
targets: delivery is at least once. On a miss the data dir and the server logs are kept.

    .venv/bin/python bench/faults.py                                   # 400 jobs, 30 s overload
    .venv/bin/python bench/faults.py --jobs 60 --overload-seconds 5    # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import inspect
import json
import math
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out" / "faults.json"
API_KEY = "bench-faults-key"
WEBHOOK_SECRET = "bench-faults-webhook-secret"
FINAL = frozenset({"succeeded", "failed", "dead", "cancelled"})
LIVE_REPLICA = frozenset({"ready", "busy"})
FAULTS = (
    "kill-worker",
    "kill-gateway",
    "kill-worker",
    "stop-worker",
    "kill-worker",
    "kill-gateway",
    "kill-worker",
)
SUBMIT_DEADLINE = 120.0  # seconds a phase-1 client keeps retrying one submit
READY_TIMEOUT = 120.0  # seconds for `swell up` to have its replicas ready
IDLE_REUSE = 1.0  # an overload connection idle longer than this is closed, not reused
MISSES_SHOWN = 25


# -- processes: burners, `swell up`, workers -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def burners(count: int) -> Iterator[list[int]]:
    """`count` processes spinning on a core each, killed on the way out."""
    procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(count)]
    try:
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@dataclass
class Gateway:
    """`swell up` as a subprocess that the benchmark can SIGKILL and start again on the same data dir."""

    config: Path
    data_dir: Path
    logs: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    workers_seen: set[int] = field(default_factory=set)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        cmd = [sys.executable, "-m", "swell", "up", "--config", str(self.config)]
        cmd += ["--data-dir", str(self.data_dir), "--port", str(self.port)]
        with (self.logs / f"swell-{self.starts}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=BENCH, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self) -> int:
        """SIGKILL `swell up` alone (its workers notice their parent is gone and drain)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        return self.proc.pid

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the workers drain), SIGKILL after `timeout`; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 30) -> str:
        text = (self.logs / f"swell-{self.starts}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def kill_stray_workers(self) -> list[int]:
        """SIGKILL the workers this run started that still live (by pid, checked to be a swell worker)."""
        killed = []
        for pid in sorted(self.workers_seen):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"swell.worker" in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        return killed


def gateway_env(bench_dir: Path, callback_host: str) -> dict[str, str]:
    """This environment less any `SWELL_*`, plus the key, the webhook secret, the receiver allowed as a
    callback target (`host:port`) and bench/ on the path (the workers import `faults_job` from it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWELL_")}
    path = os.pathsep.join(p for p in (str(bench_dir), env.get("PYTHONPATH", "")) if p)
    return {
        **env,
        "PYTHONPATH": path,
        "SWELL_API_KEY": API_KEY,
        "SWELL_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SWELL_CALLBACK_ALLOW_HOSTS": callback_host,
        "HF_HUB_OFFLINE": "1",
    }


async def replicas(client: httpx.AsyncClient, gateway: Gateway, service: str) -> list[dict[str, Any]]:
    response = await client.get(f"{gateway.base}/v1/services", timeout=5)
    response.raise_for_status()
    found = next(s for s in response.json()["services"] if s["name"] == service)
    rows: list[dict[str, Any]] = found["replicas"]
    gateway.workers_seen.update(r["pid"] for r in rows if r.get("pid"))
    return rows


async def wait_ready(client: httpx.AsyncClient, gateway: Gateway, service: str, want: int) -> float:
    """Seconds until `want` replicas of `service` are ready; raises with the log tail if it never is."""
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT:
        if gateway.exited() is not None:
            raise RuntimeError(f"swell up exited with {gateway.exited()}:\n{gateway.log_tail()}")
        with contextlib.suppress(httpx.HTTPError, StopIteration, KeyError, ValueError):
            rows = await replicas(client, gateway, service)
            if sum(r["state"] in LIVE_REPLICA for r in rows) >= want:
                return time.monotonic() - start
        await asyncio.sleep(0.2)
    raise RuntimeError(
        f"{want} replicas of {service} not ready in {READY_TIMEOUT:g} s:\n{gateway.log_tail()}"
    )


async def wait_healthy(client: httpx.AsyncClient, gateway: Gateway) -> float:
    """Seconds until `/healthz` answers 200."""
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT:
        if gateway.exited() is not None:
            raise RuntimeError(f"swell up exited with {gateway.exited()}:\n{gateway.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(f"{gateway.base}/healthz", timeout=2)).status_code == 200:
                return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise RuntimeError(f"/healthz not 200 in {READY_TIMEOUT:g} s:\n{gateway.log_tail()}")


# -- the webhook receiver ---------------------------------------------------------------------------------


@dataclass
class Delivery:
    job_id: str
    state: str | None
    signed: bool
    at: float


@dataclass
class Receiver:
    """Records every webhook delivery, by job id, with whether its signature verified."""

    url: str = ""
    deliveries: dict[str, list[Delivery]] = field(default_factory=lambda: collections.defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, headers: dict[str, str], body: bytes) -> None:
        try:
            sent = json.loads(body)
            job_id, state = str(sent["id"]), sent.get("state")
        except (ValueError, KeyError, TypeError):
            job_id, state = headers.get("x-swell-job-id", "?"), None
        delivery = Delivery(job_id, state, signature_ok(headers, body), time.time())
        with self.lock:
            self.deliveries[job_id].append(delivery)

    def snapshot(self) -> dict[str, list[Delivery]]:
        with self.lock:
            return {job_id: list(rows) for job_id, rows in self.deliveries.items()}


def signature_ok(headers: dict[str, str], body: bytes) -> bool:
    """Check the delivery with the gateway's own `verify`, whichever signature scheme it has: with a
    timestamp parameter, the `X-Swell-Timestamp` header goes with it."""
    from swell.gateway import webhooks

    signature = headers.get("x-swell-signature", "")
    params = inspect.signature(webhooks.verify).parameters
    if "timestamp" in params:
        timestamp = headers.get("x-swell-timestamp", "")
        return bool(webhooks.verify(body, signature, WEBHOOK_SECRET, timestamp=timestamp))  # type: ignore[call-arg]
    return bool(webhooks.verify(body, signature, WEBHOOK_SECRET))


@contextlib.contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the dispatcher's client expects

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.record({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


# -- phase 1: submits with retries, faults, settling -----------------------------------------------------


@dataclass
class Submitted:
    """One job as the client saw it: its key, the id it was acknowledged with, every answer it got."""

    key: str
    job_id: str | None = None
    answers: list[str] = field(default_factory=list)
    refused: str | None = None  # a 4xx that retrying cannot fix

    @property
    def replayed(self) -> bool:
        return bool(self.answers) and self.answers[-1] == "200 replayed"


@dataclass
class Phase1:
    args: argparse.Namespace
    gateway: Gateway
    receiver: Receiver
    service: str
    lease_seconds: float
    runs: Path
    t0: float = field(default_factory=time.monotonic)
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def note(self, fault: str, **details: Any) -> None:
        self.timeline.append({"t": round(time.monotonic() - self.t0, 2), "fault": fault, **details})

    def body(self, key: str) -> dict[str, Any]:
        return {
            "service": self.service,
            "input": {"key": key, "sleep": self.args.job_seconds, "runs": str(self.runs)},
            "idempotency_key": key,
            "callback_url": self.receiver.url,
        }


async def sleep_until(at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))


def backoff(tries: int, retry_after: str | None) -> float:
    """The server's `Retry-After` (capped at 5 s), else 0.2 s doubling to 2 s; with jitter."""
    with contextlib.suppress(TypeError, ValueError):
        return min(5.0, float(retry_after)) * random.uniform(1.0, 1.2)  # type: ignore[arg-type]
    return min(2.0, 0.2 * 2 ** min(tries, 4)) * random.uniform(0.5, 1.5)


async def submit_one(run: Phase1, client: httpx.AsyncClient, key: str) -> Submitted:
    """Submit until acknowledged (or refused for good, or SUBMIT_DEADLINE passes)."""
    job = Submitted(key)
    deadline = time.monotonic() + SUBMIT_DEADLINE
    while time.monotonic() < deadline:
        retry_after = None
        try:
            response = await client.post(f"{run.gateway.base}/v1/jobs", json=run.body(key))
        except httpx.HTTPError as exc:
            job.answers.append(type(exc).__name__)
        else:
            replayed = response.headers.get("idempotent-replayed") == "true"
            job.answers.append(f"{response.status_code}{' replayed' if replayed else ''}")
            if response.status_code in (200, 202):
                job.job_id = response.json()["id"]
                return job
            if 400 <= response.status_code < 500 and response.status_code != 429:
                job.refused = f"{response.status_code}: {response.text[:300]}"
                return job
            retry_after = response.headers.get("retry-after")
        await asyncio.sleep(backoff(len(job.answers), retry_after))
    return job


async def submit_all(run: Phase1, client: httpx.AsyncClient) -> list[Submitted]:
    """`--jobs` submits at a steady `--rate`, each retried on its own."""
    tasks = []
    start = time.monotonic()
    for i in range(run.args.jobs):
        await sleep_until(start + i / run.args.rate)
        tasks.append(asyncio.create_task(submit_one(run, client, f"job-{i:05d}")))
    return list(await asyncio.gather(*tasks))


async def pick_worker(run: Phase1, client: httpx.AsyncClient) -> dict[str, Any]:
    """A busy worker when one is, else a ready one, of a gateway whose replicas are all up."""
    await wait_ready(client, run.gateway, run.service, run.args.replicas)
    rows = [r for r in await replicas(client, run.gateway, run.service) if r["state"] in LIVE_REPLICA]
    busy = [r for r in rows if r["state"] == "busy"]
    return random.choice(busy or rows)


async def kill_worker(run: Phase1, client: httpx.AsyncClient) -> None:
    worker = await pick_worker(run, client)
    with contextlib.suppress(ProcessLookupError):
        os.kill(worker["pid"], signal.SIGKILL)
    run.note("kill-worker", pid=worker["pid"], state=worker["state"])


async def stop_worker(run: Phase1, client: httpx.AsyncClient) -> None:
    """SIGSTOP a worker for its lease and 3 s more, so its jobs' leases expire under it; then SIGCONT."""
    worker = await pick_worker(run, client)
    seconds = run.lease_seconds + 3.0
    try:
        os.kill(worker["pid"], signal.SIGSTOP)
        run.note("stop-worker", pid=worker["pid"], state=worker["state"], seconds=seconds)
        await asyncio.sleep(seconds)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker["pid"], signal.SIGCONT)


async def kill_gateway(run: Phase1, client: httpx.AsyncClient) -> None:
    """SIGKILL `swell up`, start it again on the same data dir; note how long until it answers."""
    pid = run.gateway.kill()
    await asyncio.sleep(0.5)
    run.gateway.start()
    healthy = await wait_healthy(client, run.gateway)
    run.note("kill-gateway", pid=pid, restarted_pid=run.gateway.proc.pid, healthy_after_s=round(healthy, 2))  # type: ignore[union-attr]


ACTIONS: dict[str, Callable[[Phase1, httpx.AsyncClient], Awaitable[None]]] = {
    "kill-worker": kill_worker,
    "stop-worker": stop_worker,
    "kill-gateway": kill_gateway,
}


async def inject_faults(run: Phase1, client: httpx.AsyncClient) -> None:
    """The faults of FAULTS, evenly over the submit window (each after the one before has finished)."""
    window = run.args.jobs / run.args.rate
    start = time.monotonic()
    for i, fault in enumerate(FAULTS):
        await sleep_until(start + window * (i + 1) / (len(FAULTS) + 1))
        await ACTIONS[fault](run, client)


async def fetch_views(
    client: httpx.AsyncClient, base: str, ids: list[str], views: dict[str, dict[str, Any]]
) -> None:
    """GET each job into `views` (a 404 is kept as `{"state": "unknown"}`; other failures skipped)."""
    limit = asyncio.Semaphore(8)

    async def one(job_id: str) -> None:
        async with limit:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = await client.get(f"{base}/v1/jobs/{job_id}")
                if response.status_code == 404:
                    views[job_id] = {"id": job_id, "state": "unknown"}
                elif response.status_code == 200:
                    views[job_id] = response.json()

    await asyncio.gather(*(one(job_id) for job_id in ids))


async def settle(run: Phase1, client: httpx.AsyncClient, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Poll until every job is final or `--settle-timeout` passes; the last view of each."""
    views: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + run.args.settle_timeout
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        await fetch_views(client, run.gateway.base, pending, views)
        pending = [i for i in pending if views.get(i, {}).get("state") not in FINAL]
        if pending:
            await asyncio.sleep(1.0)
    return views


def webhook_settled(view: dict[str, Any], delivered: dict[str, list[Delivery]]) -> bool:
    """A final job's webhook has arrived, or the gateway gave up on it, or it has none."""
    webhook = view.get("webhook") or {}
    return view["id"] in delivered or webhook.get("state") in (None, "failed", "delivered")


async def await_webhooks(
    run: Phase1, client: httpx.AsyncClient, views: dict[str, dict[str, Any]]
) -> dict[str, list[Delivery]]:
    """Wait until each final job's webhook has arrived (or was given up), then a grace of 2 s for
    late duplicates; the deliveries by job id."""
    deadline = time.monotonic() + run.args.webhook_timeout
    final = [job_id for job_id, view in views.items() if view.get("state") in FINAL]
    while time.monotonic() < deadline:
        delivered = run.receiver.snapshot()
        waiting = [i for i in final if i not in delivered]
        if not waiting:
            break
        await fetch_views(client, run.gateway.base, waiting, views)
        if all(webhook_settled(views[i], delivered) for i in waiting):
            break
        await asyncio.sleep(1.0)
    await asyncio.sleep(2.0)
    return run.receiver.snapshot()


async def all_jobs(client: httpx.AsyncClient, base: str, service: str) -> tuple[list[dict[str, Any]], bool]:
    """Every job of `service` from the listing, following `next_cursor` when the API pages; and whether
    the listing was complete."""
    jobs: list[dict[str, Any]] = []
    params: dict[str, Any] = {"service": service, "limit": 1000}
    while True:
        response = await client.get(f"{base}/v1/jobs", params=params)
        response.raise_for_status()
        page = response.json()
        jobs.extend(page["jobs"])
        cursor = page.get("next_cursor")
        if not cursor:
            return jobs, "next_cursor" in page or len(page["jobs"]) < 1000
        params["cursor"] = cursor


def read_runs(path: Path) -> dict[str, dict[str, list[int]]]:
    """`{key: {"start": [pid, ...], "end": [pid, ...]}}` from the job's execution log."""
    runs: dict[str, dict[str, list[int]]] = collections.defaultdict(lambda: {"start": [], "end": []})
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        event, key, pid = line.split()
        runs[key][event].append(int(pid))
    return dict(runs)


async def phase1(run: Phase1) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(headers=headers, timeout=10.0, limits=limits, trust_env=False) as client:
        async with asyncio.TaskGroup() as group:  # a fault that cannot be done (no restart) ends the run
            group.create_task(inject_faults(run, client))
            submitting = group.create_task(submit_all(run, client))
        submitted = submitting.result()
        submit_s = time.monotonic() - run.t0
        ids = [s.job_id for s in submitted if s.job_id]
        views = await settle(run, client, ids)
        settled_s = time.monotonic() - run.t0
        deliveries = await await_webhooks(run, client, views)
        listing, complete = await all_jobs(client, run.gateway.base, run.service)
    runs = read_runs(run.runs)
    counts = count_phase1(submitted, views, runs, deliveries, listing)
    counts["run_twice_by_first_run"] = why_run_twice(runs, run.timeline)
    counts["listing_complete"] = complete
    counts["seconds"] = {"submitting_and_faults": round(submit_s, 1), "until_all_final": round(settled_s, 1)}
    return counts


# -- phase 1: counting --------------------------------------------------------------------------------------


def count_phase1(
    submitted: list[Submitted],
    views: dict[str, dict[str, Any]],
    runs: dict[str, dict[str, list[int]]],
    deliveries: dict[str, list[Delivery]],
    listing: list[dict[str, Any]],
) -> dict[str, Any]:
    acked = [s for s in submitted if s.job_id]
    states = collections.Counter(views.get(s.job_id or "", {}).get("state", "unknown") for s in acked)
    lost = [s for s in acked if views.get(s.job_id or "", {}).get("state") not in FINAL]
    ends = {key: len(r["end"]) for key, r in runs.items()}
    starts = {key: len(r["start"]) for key, r in runs.items()}
    return {
        "submitted": len(submitted),
        "acknowledged": len(acked),
        "unacknowledged": len(submitted) - len(acked),
        "acknowledged_on_replay": sum(s.replayed for s in acked),
        "submit_retries": sum(len(s.answers) - 1 for s in submitted),
        "submit_answers": dict(collections.Counter(a for s in submitted for a in s.answers)),
        "states": dict(states),
        "succeeded": states["succeeded"],
        "lost": len(lost),
        "dead": states["dead"],
        "failed": states["failed"],
        "wrong_result": wrong_results(acked, views),
        "jobs_per_key_over_1": jobs_created_twice(listing),
        "run_twice": sum(n > 1 for n in ends.values()),
        "started_twice": sum(n > 1 for n in starts.values()),
        "never_ran_to_end_but_succeeded": sum(
            1
            for s in acked
            if views.get(s.job_id or "", {}).get("state") == "succeeded" and not ends.get(s.key)
        ),
        "webhooks": count_webhooks(acked, views, deliveries),
        "misses": misses(submitted, views, runs, deliveries),
    }


def why_run_twice(runs: dict[str, dict[str, list[int]]], timeline: list[dict[str, Any]]) -> dict[str, int]:
    """The jobs that ran to their end twice, by what became of the worker that ran them first: SIGKILLed
    (its finished results were not recorded before the kill), SIGSTOPped past its lease (the lease went
    to another worker meanwhile), or neither."""
    faults = {row["pid"]: row["fault"] for row in timeline if row["fault"] in ("kill-worker", "stop-worker")}
    why: collections.Counter[str] = collections.Counter()
    for events in runs.values():
        if len(events["end"]) > 1:
            why[faults.get(events["end"][0], "no fault on that worker")] += 1
    return dict(why)


def wrong_results(acked: list[Submitted], views: dict[str, dict[str, Any]]) -> int:
    """Succeeded jobs whose result is not their own input's key."""
    wrong = 0
    for s in acked:
        view = views.get(s.job_id or "", {})
        if view.get("state") == "succeeded" and (view.get("result") or {}).get("key") != s.key:
            wrong += 1
    return wrong


def jobs_created_twice(listing: list[dict[str, Any]]) -> int:
    """Idempotency keys that more than one job carries."""
    keys = collections.Counter(job.get("idempotency_key") for job in listing if job.get("idempotency_key"))
    return sum(n > 1 for n in keys.values())


def final_states(acked: list[Submitted], views: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Job id -> final state, for the acknowledged jobs that are final."""
    states = {s.job_id: views.get(s.job_id, {}).get("state") for s in acked if s.job_id}
    return {job_id: state for job_id, state in states.items() if state in FINAL}


def count_webhooks(
    acked: list[Submitted], views: dict[str, dict[str, Any]], deliveries: dict[str, list[Delivery]]
) -> dict[str, Any]:
    final = final_states(acked, views)
    rows = [d for job_rows in deliveries.values() for d in job_rows]
    valid = {job_id: [d for d in job_rows if d.signed] for job_id, job_rows in deliveries.items()}
    gave_up = sum(1 for i in final if (views[i].get("webhook") or {}).get("state") == "failed")
    return {
        "deliveries": len(rows),
        "bad_signatures": sum(not d.signed for d in rows),
        "jobs_with_duplicates": sum(len(v) > 1 for v in valid.values()),
        "duplicate_deliveries": sum(max(0, len(v) - 1) for v in valid.values()),
        "missing": sum(1 for i in final if not valid.get(i)),
        "gateway_gave_up": gave_up,
        "wrong_state": sum(1 for i, state in final.items() for d in valid.get(i, []) if d.state != state),
        "unknown_jobs": sum(1 for i in deliveries if i not in final),
    }


def misses(
    submitted: list[Submitted],
    views: dict[str, dict[str, Any]],
    runs: dict[str, dict[str, list[int]]],
    deliveries: dict[str, list[Delivery]],
) -> list[dict[str, Any]]:
    """What is known of each job that missed a target: never acknowledged, lost, dead or failed."""
    shown = []
    for s in submitted:
        view = views.get(s.job_id or "", {})
        if s.job_id and view.get("state") in ("succeeded", "cancelled"):
            continue
        keep = (
            "state",
            "attempts",
            "max_attempts",
            "error",
            "webhook",
            "created_at",
            "started_at",
            "finished_at",
        )
        shown.append(
            {
                "key": s.key,
                "job_id": s.job_id,
                "refused": s.refused,
                "submit_answers": s.answers,
                "job": {k: view.get(k) for k in keep} if view else None,
                "executions": runs.get(s.key),
                "webhooks": len(deliveries.get(s.job_id or "", [])),
            }
        )
    return shown[:MISSES_SHOWN]


# -- phase 2: a lean HTTP/1.1 client, in several processes ------------------------------------------------


@dataclass
class Answer:
    status: int
    retry_after: str | None
    error: str | None  # the `error` of a JSON error body
    close: bool  # the server closes the connection after this answer


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON to /v1/jobs and reads the answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader, self.writer, self.head = reader, writer, head
        self.idle_since = time.monotonic()
        self.used = False

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {API_KEY}\r\n"
        )
        return cls(reader, writer, head.encode())

    def reusable(self) -> bool:
        fresh = time.monotonic() - self.idle_since < IDLE_REUSE
        return fresh and not self.reader.at_eof() and not self.writer.is_closing()

    async def post(self, body: bytes) -> Answer:
        self.used = True
        self.writer.write(b"%sContent-Length: %d\r\n\r\n%s" % (self.head, len(body), body))
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection without answering")
        status = int(status_line.split()[1])
        headers = await self._headers()
        text = await self.reader.readexactly(int(headers.get("content-length", "0")))
        self.idle_since = time.monotonic()
        close = headers.get("connection", "").lower() == "close"
        return Answer(status, headers.get("retry-after"), _error_name(status, text), close)

    async def _headers(self) -> dict[str, str]:
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return headers

    def close(self) -> None:
        self.writer.close()


def _error_name(status: int, text: bytes) -> str | None:
    if status < 300:
        return None
    try:
        return str(json.loads(text).get("error"))
    except (ValueError, AttributeError):
        return "(not JSON)"


@dataclass
class LoadStats:
    """What one load process saw; merged across processes by `merge`."""

    sent: int = 0
    accepted: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    shed_with_retry_after: int = 0
    shed_without_retry_after: int = 0
    shed_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    timeouts: int = 0
    connection_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    accepted_latency: list[float] = field(default_factory=list)
    shed_latency: list[float] = field(default_factory=list)
    send_lag: list[float] = field(default_factory=list)
    send_seconds: float = 0.0  # from the first scheduled send to the last actual one (open loop)

    def add(self, answer: Answer, latency: float) -> None:
        self.statuses[str(answer.status)] += 1
        if answer.status in (200, 202):
            self.accepted += 1
            self.accepted_latency.append(latency)
        elif answer.status in (429, 503):
            self.shed_latency.append(latency)
            self.shed_errors[str(answer.error)] += 1
            if answer.retry_after is not None and _seconds(answer.retry_after):
                self.shed_with_retry_after += 1
            else:
                self.shed_without_retry_after += 1

    def failed(self, exc: BaseException, reused: bool) -> None:
        if isinstance(exc, TimeoutError):
            self.timeouts += 1
        else:
            self.connection_errors[f"{type(exc).__name__}{' (reused connection)' if reused else ''}"] += 1


def _seconds(value: str) -> bool:
    try:
        return float(value) >= 0
    except ValueError:
        return False


@dataclass
class LoadSpec:
    host: str
    port: int
    service: str
    prefix: str
    start_at: float  # wall-clock time every process starts at
    seconds: float
    timeout: float
    rate: float = 0.0  # open loop: arrivals per second from this process
    clients: int = 0  # closed loop: clients in this process


def load_process(spec: LoadSpec) -> LoadStats:
    """Entry point of a load process: the closed loop when `spec.clients`, else the open loop."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return asyncio.run(closed_loop(spec) if spec.clients else open_loop(spec))


def job_body(spec: LoadSpec, i: int) -> bytes:
    return json.dumps({"service": spec.service, "input": {"key": f"{spec.prefix}-{i}", "sleep": 0}}).encode()


async def closed_loop(spec: LoadSpec) -> LoadStats:
    """`spec.clients` clients, each sending its next submit when the last is answered."""
    stats = LoadStats()
    numbers = iter(range(10**9))
    await asyncio.sleep(max(0.0, spec.start_at - time.time()))
    deadline = time.monotonic() + spec.seconds

    async def client() -> None:
        connection: Connection | None = None
        while time.monotonic() < deadline:
            connection = await _one(spec, stats, next(numbers), connection)

    await asyncio.gather(*(client() for _ in range(spec.clients)))
    return stats


async def open_loop(spec: LoadSpec) -> LoadStats:
    """Request i leaves at start + i/rate whatever the others do, on an idle connection or a new one."""
    stats = LoadStats()
    idle: collections.deque[Connection] = collections.deque()

    async def one(i: int) -> None:
        connection = _idle_connection(idle)
        if (connection := await _one(spec, stats, i, connection)) is not None:
            idle.append(connection)

    await asyncio.sleep(max(0.0, spec.start_at - time.time()))
    start = time.perf_counter()
    tasks = []
    for i in range(int(spec.rate * spec.seconds)):
        scheduled = start + i / spec.rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        stats.send_lag.append(time.perf_counter() - scheduled)
        tasks.append(asyncio.create_task(one(i)))
    stats.send_seconds = time.perf_counter() - start
    await asyncio.gather(*tasks)
    for connection in idle:
        connection.close()
    return stats


def _idle_connection(idle: collections.deque[Connection]) -> Connection | None:
    while idle:
        connection = idle.popleft()
        if connection.reusable():
            return connection
        connection.close()
    return None


async def _one(spec: LoadSpec, stats: LoadStats, i: int, connection: Connection | None) -> Connection | None:
    """One submit under the client timeout (connecting included); returns the connection when it can
    be used again. The latency runs from the send, not the schedule: `send_lag` shows how late the
    client itself was (on a starved machine it is, and that is not the gateway's doing)."""
    stats.sent += 1
    started = time.perf_counter()
    reused = connection is not None
    try:
        async with asyncio.timeout(spec.timeout):
            connection = connection or await Connection.open(spec.host, spec.port)
            answer = await connection.post(job_body(spec, i))
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        stats.failed(exc, reused)
        if connection is not None:
            connection.close()
        return None
    stats.add(answer, time.perf_counter() - started)
    if answer.close:
        connection.close()
        return None
    return connection


def merge(parts: list[LoadStats]) -> LoadStats:
    total = LoadStats()
    for part in parts:
        for name in ("sent", "accepted", "shed_with_retry_after", "shed_without_retry_after", "timeouts"):
            setattr(total, name, getattr(total, name) + getattr(part, name))
        for name in ("statuses", "shed_errors", "connection_errors"):
            getattr(total, name).update(getattr(part, name))
        for name in ("accepted_latency", "shed_latency", "send_lag"):
            getattr(total, name).extend(getattr(part, name))
        total.send_seconds = max(total.send_seconds, part.send_seconds)
    return total


def percentile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def run_load(pool: ProcessPoolExecutor, specs: list[LoadSpec]) -> LoadStats:
    return merge(list(pool.map(load_process, specs)))


def phase2(args: argparse.Namespace, gateway: Gateway, service: str) -> dict[str, Any]:
    """The capacity (closed loop), then `--overload-factor` times it (open loop), from the same processes."""
    common = {"host": "127.0.0.1", "port": gateway.port, "service": service, "timeout": args.client_timeout}
    with ProcessPoolExecutor(args.client_procs, mp_context=get_context("spawn")) as pool:
        capacity = measure_capacity(pool, args, common)
        per_s = capacity.accepted / args.capacity_seconds
        time.sleep(2.0)
        rate = max(1.0, args.overload_factor * per_s)
        overload = overload_at(pool, args, common, rate)
    return {
        "capacity": {
            "clients": args.client_procs * math.ceil(args.capacity_clients / args.client_procs),
            "seconds": args.capacity_seconds,
            **describe(capacity, args.capacity_seconds),
        },
        "capacity_per_s": round(per_s, 1),
        "overload": {
            "rate_per_s": round(rate, 1),
            "achieved_factor": round(
                overload.sent / max(args.overload_seconds, overload.send_seconds) / max(per_s, 1e-9), 2
            ),
            "seconds": args.overload_seconds,
            **describe(overload, args.overload_seconds),
        },
    }


def measure_capacity(
    pool: ProcessPoolExecutor, args: argparse.Namespace, common: dict[str, Any]
) -> LoadStats:
    start = time.time() + 3.0  # the processes are spawned and import meanwhile
    clients = math.ceil(args.capacity_clients / args.client_procs)
    specs = [
        LoadSpec(**common, prefix=f"c{p}", start_at=start, seconds=args.capacity_seconds, clients=clients)
        for p in range(args.client_procs)
    ]
    return run_load(pool, specs)


def overload_at(
    pool: ProcessPoolExecutor, args: argparse.Namespace, common: dict[str, Any], rate: float
) -> LoadStats:
    start = time.time() + 1.0
    each = rate / args.client_procs
    specs = [
        LoadSpec(**common, prefix=f"o{p}", start_at=start, seconds=args.overload_seconds, rate=each)
        for p in range(args.client_procs)
    ]
    return run_load(pool, specs)


def describe(stats: LoadStats, seconds: float) -> dict[str, Any]:
    answered = stats.accepted + stats.shed_with_retry_after + stats.shed_without_retry_after
    other = sum(n for code, n in stats.statuses.items() if code not in ("200", "202", "429", "503"))

    def share(n: int) -> float:
        return round(100 * n / stats.sent, 2) if stats.sent else 0.0

    return {
        "sent": stats.sent,
        "sent_per_s": round(stats.sent / max(seconds, stats.send_seconds), 1),
        "accepted": stats.accepted,
        "shed": answered - stats.accepted,
        "shed_without_retry_after": stats.shed_without_retry_after,
        "shed_as": dict(stats.shed_errors),
        "other_status": other,
        "statuses": dict(stats.statuses),
        "timeouts": stats.timeouts,
        "connection_errors": dict(stats.connection_errors),
        "share_pct": {
            "accepted": share(stats.accepted),
            "429_503": share(answered - stats.accepted),
            "other_status": share(other),
            "timeouts": share(stats.timeouts),
            "connection_errors": share(sum(stats.connection_errors.values())),
        },
        "accepted_latency_ms": {
            "p50": percentile_ms(stats.accepted_latency, 0.5),
            "p99": percentile_ms(stats.accepted_latency, 0.99),
            "max": percentile_ms(stats.accepted_latency, 1.0),
        },
        "shed_latency_ms": {
            "p50": percentile_ms(stats.shed_latency, 0.5),
            "p99": percentile_ms(stats.shed_latency, 0.99),
        },
        "send_lag_ms": {
            "p50": percentile_ms(stats.send_lag, 0.5),
            "p99": percentile_ms(stats.send_lag, 0.99),
        },
    }


# -- targets, summary, main ------------------------------------------------------------------------------


def targets(jobs: dict[str, Any], load: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Each target with the value measured and whether it was met (all are 'must be 0')."""
    values = {
        "lost": jobs["lost"],
        "dead": jobs["dead"],
        "failed": jobs["failed"],
        "unacknowledged": jobs["unacknowledged"],
        "jobs_per_key_over_1": jobs["jobs_per_key_over_1"],
        "wrong_result": jobs["wrong_result"],
        "webhooks_missing": jobs["webhooks"]["missing"],
        "webhook_bad_signatures": jobs["webhooks"]["bad_signatures"],
    }
    if load is not None:
        overload = load["overload"]
        values |= {
            "overload_other_status": overload["other_status"],
            "overload_shed_without_retry_after": overload["shed_without_retry_after"],
            "overload_timeouts": overload["timeouts"],
            "overload_connection_errors": sum(overload["connection_errors"].values()),
        }
    return {name: {"value": value, "target": 0, "met": value == 0} for name, value in values.items()}


def source_state() -> str:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + (" with uncommitted changes" if dirty else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=400, help="phase-1 jobs")
    parser.add_argument("--rate", type=float, default=10.0, help="phase-1 submits per second")
    parser.add_argument("--job-seconds", type=float, default=0.03, help="what each phase-1 job sleeps")
    parser.add_argument("--settle-timeout", type=float, default=180.0, help="for every job to be final")
    parser.add_argument("--webhook-timeout", type=float, default=60.0, help="for the webhooks, after that")
    parser.add_argument("--overload-seconds", type=float, default=30.0, help="0 skips phase 2")
    parser.add_argument("--overload-factor", type=float, default=3.0, help="times the measured capacity")
    parser.add_argument("--capacity-seconds", type=float, default=5.0)
    parser.add_argument("--capacity-clients", type=int, default=8)
    parser.add_argument("--client-procs", type=int, default=2, help="processes generating phase 2")
    parser.add_argument("--client-timeout", type=float, default=5.0, help="seconds, phase 2")
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 1, help="CPU burner processes")
    parser.add_argument("--no-burn", action="store_true", help="no CPU burners")
    parser.add_argument("--config", type=Path, default=BENCH / "faults.yaml")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keep", action="store_true", help="keep the data dir and logs even on success")
    return parser.parse_args(argv)


def service_config(path: Path) -> tuple[str, int, float]:
    """The benchmarked service's name, replicas and lease from the config (its first service)."""
    service = yaml.safe_load(path.read_text())["services"][0]
    replicas = int(service.get("replicas", {}).get("min", 1))
    return service["name"], replicas, float(service.get("lease_seconds", 30.0))


def run_benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    service, args.replicas, lease = service_config(args.config)
    with burners(0 if args.no_burn else args.burners) as burning, webhook_receiver() as receiver:
        env = gateway_env(BENCH, httpx.URL(receiver.url).netloc.decode())
        gateway = Gateway(args.config.resolve(), workdir / "data", workdir, free_port(), env)
        gateway.start()
        try:
            ready = asyncio.run(_ready(gateway, service, args.replicas))
            run = Phase1(args, gateway, receiver, service, lease, workdir / "runs.log")
            jobs = asyncio.run(phase1(run))
            load = phase2(args, gateway, service) if args.overload_seconds > 0 else None
        finally:
            stopped = gateway.stop()
            strays = gateway.kill_stray_workers()
    return {
        "burners": len(burning),
        "first_start_ready_s": round(ready, 2),
        "faults": run.timeline,
        "jobs": jobs,
        "load": load,
        "gateway_exit_status": stopped,
        "stray_workers_killed": strays,
    }


async def _ready(gateway: Gateway, service: str, replicas: int) -> float:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, trust_env=False) as client:
        return await wait_ready(client, gateway, service, replicas)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="swell-faults-"))
    started = datetime.datetime.now(datetime.UTC)
    results = run_benchmark(args, workdir)
    checked = targets(results["jobs"], results["load"])
    ok = all(t["met"] for t in checked.values())
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "source": source_state(),
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **results,
        "targets": checked,
        "ok": ok,
    }
    if not ok or args.keep:
        summary["kept"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    missed = [name for name, t in checked.items() if not t["met"]]
    print(f"targets {'met' if ok else 'MISSED: ' + ', '.join(missed)}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
