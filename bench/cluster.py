"""The Ray backend on a local two-node Ray cluster, against the local backend: throughput, warm and
cold scale-up, a node killed mid-run, and the Redis calls a job costs.

Runs only in a network namespace whose only interface is loopback (Ray would otherwise advertise the
machine's outward address), with a Redis inside it:

    ip netns add swell-bench; ip netns exec swell-bench ip link set lo up
    ip netns exec swell-bench redis-server --port 6420 --daemonize yes --save ''
    ip netns exec swell-bench .venv/bin/python bench/cluster.py                 # the default run
    ip netns exec swell-bench .venv/bin/python bench/cluster.py --rounds 2 --round-seconds 5 --trials 1

The cluster is `ray.cluster_utils.Cluster` with token authentication (a fresh RAY_AUTH_TOKEN): a
head (2 CPUs, 1 logical GPU) and a worker node (2 CPUs) that advertises `swell_warm_wm` (its node
cache holds dataset `wm`). The queue is the Redis at `--redis` (database `--db`, flushed first).

1. Throughput. Two services on the one queue, both running throughout: `tput-ray` (2 replicas on the
   Ray backend) and `tput-local` (2 replicas, `LocalSupervisor`), the `callable` engine running
   `cluster:sleep_job` (`--job-ms`, 5 ms). Interleaved rounds (ray, local, ray, local, ...) of
   `--round-seconds`, each a closed loop of `--outstanding` jobs: a job is submitted as soon as one
   finishes (one poller reads the outstanding jobs every 5 ms). The ratio of the medians is the
   Ray backend's overhead.
2. Redis calls per job: `CONFIG RESETSTAT`, an idle window (the workers' lease polling alone), then
   `--redis-jobs` jobs for `tput-local` submitted at once; calls per job = (calls in the window -
   idle rate x window) / jobs, from `INFO commandstats` (commands run inside Lua scripts count).
3. Scale-up, warm against cold. Service `probe` (min 0) runs `cluster:load_job`, whose first call in
   a worker reads a `--dataset-mb` file through the node cache (`swell.data.datasets.dataset_path`)
   from an HTTP origin in this process capped at `--origin-mbps` (standing in for an object store
   across a network). A trial submits one job, calls `scale("probe", 1, models=[dataset])` and times
   until the job has succeeded. Warm: dataset `wm`, preloaded into the cache once (as the KubeRay
   init step does) and advertised by the worker node, so the replica goes there and reads the file
   from the cache's local tree. Cold: dataset `cd` (the same bytes under another URL), which no node
   advertises and which is evicted from the cache before each trial, so the worker fetches it from
   the origin. The nodes of this one-machine cluster share a disk: the node cache is one directory,
   and what makes a trial warm or cold is the cache's content, matched to what the nodes advertise.
4. A node killed mid-run. A third node (1 CPU, advertising `swell_warm_victim`) takes both replicas
   of service `kill`; `--kill-jobs` jobs of 20 ms are submitted; once a quarter are done, the node's
   workers are SIGKILLed (on a real node they die with it) and the node is removed
   (`remove_node(allow_graceful=False)`). Then every job is waited for until final and counted.

Prints a JSON summary, writes it to bench/out/cluster.json, exits 1 when a target is missed
(Ray overhead at most 10 %, 0 jobs lost).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out" / "cluster.json"
FINAL = frozenset({"succeeded", "failed", "dead", "cancelled"})
SERVING = frozenset({"ready", "busy"})
WEIGHTS = "weights.bin"
POLL = 0.005  # seconds between the closed loop's reads of its outstanding jobs

_loaded: dict[str, int] = {}  # in a worker: datasets read so far (name -> bytes)


# -- what the workers run (imported as `cluster:...`, so kept light: stdlib at the top) ----------


def sleep_job(item: dict[str, Any]) -> dict[str, Any]:
    """A short job: sleep `seconds`."""
    time.sleep(float(item.get("seconds", 0.005)))
    return {"ok": True}


def load_job(item: dict[str, Any]) -> dict[str, Any]:
    """Read the dataset `item["dataset"]` through the node cache once per worker (a model load), then
    answer; later calls find it loaded."""
    name = str(item["dataset"])
    start = time.perf_counter()
    fresh = name not in _loaded
    if fresh:
        _loaded[name] = read_dataset(name, str(item["source"]), Path(item["data_dir"]))
    return {
        "node": os.environ.get("SWELL_NODE_ID"),
        "loaded_now": fresh,
        "bytes": _loaded[name],
        "load_s": round(time.perf_counter() - start, 3),
    }


def read_dataset(name: str, source: str, data_dir: Path) -> int:
    from swell.data.config import DatasetConfig
    from swell.data.datasets import dataset_path

    config = DatasetConfig(source=source, include=[WEIGHTS])
    tree = dataset_path(name, {name: config}, data_dir)
    digest = hashlib.sha256()
    with open(tree / WEIGHTS, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return (tree / WEIGHTS).stat().st_size


# -- the origin: files over HTTP with ranges, at a capped rate -----------------------------------


def origin_handler(root: Path, rate: float) -> type[BaseHTTPRequestHandler]:
    """Serves `root/<prefix>/<file>` (HEAD, GET, one byte range) at `rate` bytes/s per request."""

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, *, body: bool) -> None:
            path = root / self.path.lstrip("/").split("?", 1)[0]
            if not path.is_file() or root not in path.resolve().parents:
                self.send_error(404)
                return
            size = path.stat().st_size
            start, end = byte_range(self.headers.get("Range"), size)
            self.send_response(206 if self.headers.get("Range") else 200)
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{size:x}-{int(path.stat().st_mtime):x}"')
            self.send_header("Last-Modified", self.date_time_string(path.stat().st_mtime))
            if self.headers.get("Range"):
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if body:
                self._send(path, start, end)

        def _send(self, path: Path, start: int, end: int) -> None:
            began = time.monotonic()
            sent = 0
            with open(path, "rb") as f:
                f.seek(start)
                while sent < end - start:
                    chunk = f.read(min(1 << 16, end - start - sent))
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    time.sleep(max(0.0, began + sent / rate - time.monotonic()))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def byte_range(header: str | None, size: int) -> tuple[int, int]:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` as [start, end); the whole file without a header."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header or "")
    if not match:
        return 0, size
    first, last = match.groups()
    if not first:
        return max(0, size - int(last)), size
    return int(first), min(size, int(last) + 1) if last else size


@contextmanager
def origin(root: Path, rate: float) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), origin_handler(root, rate))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# -- the Ray cluster -----------------------------------------------------------------------------


def require_loopback_only() -> None:
    names = [name for _, name in socket.if_nameindex()]
    if names != ["lo"]:
        sys.exit(
            f"refusing to run: interfaces {names}; run inside a loopback-only network namespace "
            "(ip netns add swell-bench; ip netns exec swell-bench ip link set lo up; ip netns exec ...)"
        )


def prepare_environment() -> None:
    """Token authentication made explicit, and the workers able to import this file as `cluster`."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    paths = [str(BENCH), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@contextmanager
def ray_cluster() -> Iterator[Any]:
    import ray
    from ray.cluster_utils import Cluster

    from swell.cluster.ray import refresh_auth

    refresh_auth()
    head = {"num_cpus": 2, "num_gpus": 1, "resources": {"head": 1}, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={**head, "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=2, num_gpus=0, resources={"swell_warm_wm": 1000}, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address, namespace="swell-bench", log_to_driver=False)
    try:
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def swell_config(services: list[dict[str, Any]]) -> Any:
    from swell.core.config import parse_config

    return parse_config({"services": services, "brain": {"mode": "off"}})


def service(name: str, function: str, replicas: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "engine": "callable",
        "options": {"function": f"cluster:{function}"},
        "replicas": {"min": replicas, "max": max(replicas, 2)},
        "resources": {"cpus": 0.5},
        **extra,
    }


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120.0) -> float:
    """Seconds until `check()` holds (polled every 10 ms); RuntimeError after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def serving(cluster: Any, name: str) -> list[Any]:
    return [r for r in cluster.replicas() if r.service == name and r.state.value in SERVING]


# -- 1. throughput, closed loop ------------------------------------------------------------------


def closed_loop(queue: Any, name: str, outstanding: int, seconds: float, job_s: float) -> dict[str, Any]:
    """Keep `outstanding` jobs of `name` in flight for `seconds`; jobs/s of those that finished."""
    from swell.core.jobs import JobSpec

    def submit() -> str:
        return str(queue.submit(JobSpec(name, {"seconds": job_s}, max_attempts=3))[0].id)

    live = [submit() for _ in range(outstanding)]
    done, failed, start = 0, 0, time.monotonic()
    while time.monotonic() - start < seconds:
        time.sleep(POLL)
        finished = [job for job in queue.get_many(live) if job.state.value in FINAL]
        done += sum(1 for job in finished if job.state.value == "succeeded")
        failed += sum(1 for job in finished if job.state.value != "succeeded")
        gone = {job.id for job in finished}
        live = [i for i in live if i not in gone] + [submit() for _ in gone]
    elapsed = time.monotonic() - start
    wait_for(lambda: all(j.state.value in FINAL for j in queue.get_many(live)), "the last jobs", 60)
    return {"jobs_per_s": round(done / elapsed, 1), "done": done, "failed": failed, "seconds": elapsed}


def throughput(args: argparse.Namespace, queue: Any, backends: dict[str, Any]) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {"ray": [], "local": []}
    closed_loop(queue, "tput-ray", args.outstanding, 2.0, args.job_ms / 1000)  # warm-up, not counted
    closed_loop(queue, "tput-local", args.outstanding, 2.0, args.job_ms / 1000)
    for _ in range(args.rounds):
        for kind in ("ray", "local"):
            run = closed_loop(queue, f"tput-{kind}", args.outstanding, args.round_seconds, args.job_ms / 1000)
            rounds[kind].append(run)
    median = {kind: statistics.median(r["jobs_per_s"] for r in runs) for kind, runs in rounds.items()}
    overhead = 1 - median["ray"] / median["local"]
    return {
        "rounds": rounds,
        "median_jobs_per_s": median,
        "ray_over_local": round(median["ray"] / median["local"], 3),
        "ray_overhead": round(overhead, 3),
        "replicas": {kind: [r.node for r in backend.replicas()] for kind, backend in backends.items()},
    }


# -- 2. Redis calls per job ----------------------------------------------------------------------


def commandstats(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def redis_calls(args: argparse.Namespace, queue: Any, client: Any) -> dict[str, Any]:
    from swell.core.jobs import JobSpec

    client.config_resetstat()
    time.sleep(args.idle_seconds)
    idle = sum(commandstats(client).values()) / args.idle_seconds
    client.config_resetstat()
    start = time.monotonic()
    specs = [JobSpec("tput-local", {"seconds": 0.0}, max_attempts=3) for _ in range(args.redis_jobs)]
    ids = [job.id for job, _ in queue.submit_many(specs)]
    while not all(job.state.value in FINAL for job in queue.get_many(ids)):
        time.sleep(0.25)
    window = time.monotonic() - start
    calls = commandstats(client)
    busy = sum(calls.values()) - idle * window
    top = dict(sorted(calls.items(), key=lambda kv: -kv[1])[:8])
    return {
        "jobs": len(ids),
        "window_s": round(window, 2),
        "idle_calls_per_s_4_replicas": round(idle, 1),
        "calls_per_job": round(busy / len(ids), 1),
        "top_commands_in_window": top,
    }


# -- 3. scale-up, warm against cold --------------------------------------------------------------


def scale_trial(ray_backend: Any, queue: Any, dataset: str, job_input: dict[str, Any]) -> dict[str, Any]:
    """Submit one job, scale `probe` to 1 holding `dataset`, time until the job succeeded."""
    from swell.core.jobs import JobSpec

    job = queue.submit(JobSpec("probe", job_input, max_attempts=3))[0]
    start = time.monotonic()
    ray_backend.scale("probe", 1, models=[dataset])
    ready = None
    while (current := queue.get(job.id)).state.value not in FINAL:
        if ready is None and serving(ray_backend, "probe"):
            ready = time.monotonic() - start
        time.sleep(0.01)
    served = time.monotonic() - start
    [replica] = [r for r in ray_backend.replicas() if r.service == "probe" and r.state.value != "stopped"]
    ray_backend.scale("probe", 0)
    wait_for(lambda: not [r for r in ray_backend.replicas() if r.service == "probe"], "probe drained", 60)
    return {
        "dataset": dataset,
        "state": current.state.value,
        "to_ready_s": round(ready or served, 3),
        "to_first_job_s": round(served, 3),
        "load_s": (current.result or {}).get("load_s"),
        "node": replica.node,
        "placed_warm": replica.warm,
    }


def scale_up(
    args: argparse.Namespace, ray_backend: Any, queue: Any, url: str, data_dir: Path
) -> dict[str, Any]:
    from swell.core.errors import NotFound
    from swell.data.cache import open_node_cache
    from swell.data.datasets import evict

    sources = {name: f"{url}/{name}" for name in ("wm", "cd")}
    read_dataset("wm", sources["wm"], data_dir)  # the init step: the warm node's cache holds wm
    trials: list[dict[str, Any]] = []
    for _ in range(args.trials):
        for name in ("cd", "wm"):
            if name == "cd":
                with suppress(NotFound):  # not cached yet: nothing to evict
                    evict("cd", open_node_cache(data_dir))
            job = {"dataset": name, "source": sources[name], "data_dir": str(data_dir)}
            trials.append(scale_trial(ray_backend, queue, name, job))
    summary = {}
    for name, label in (("wm", "warm"), ("cd", "cold")):
        mine = [t for t in trials if t["dataset"] == name]
        summary[label] = {
            "median_to_first_job_s": statistics.median(t["to_first_job_s"] for t in mine),
            "median_to_ready_s": statistics.median(t["to_ready_s"] for t in mine),
            "median_load_s": statistics.median(float(t["load_s"] or 0) for t in mine),
        }
    stats = ray_backend.statistics()
    return {"trials": trials, "summary": summary, "warm_share": stats.warm_share, "started": stats.started}


# -- 4. a node killed mid-run --------------------------------------------------------------------


def kill_node(args: argparse.Namespace, cluster: Any, ray_backend: Any, queue: Any) -> dict[str, Any]:
    from swell.core.jobs import JobSpec

    victim = cluster.add_node(num_cpus=1, resources={"swell_warm_victim": 1000}, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    ray_backend.scale("kill", 2, models=["victim"])
    wait_for(
        lambda: len([r for r in serving(ray_backend, "kill") if r.node == victim.node_id]) >= 1,
        "a kill replica on the victim node",
    )
    specs = [JobSpec("kill", {"seconds": 0.02}, max_attempts=5) for _ in range(args.kill_jobs)]
    ids = [job.id for job, _ in queue.submit_many(specs)]
    succeeded = lambda: sum(1 for j in queue.get_many(ids) if j.state.value == "succeeded")  # noqa: E731
    wait_for(lambda: succeeded() >= len(ids) // 4, "a quarter of the jobs")
    on_victim = [r for r in ray_backend.replicas() if r.node == victim.node_id and r.pid]
    held = [j.id for j in queue.get_many(ids) if j.state.value == "leased"]
    for replica in on_victim:
        os.killpg(replica.pid, signal.SIGKILL)  # what dies with a real node
    killed_at = time.monotonic()
    done_before = succeeded()
    cluster.remove_node(victim, allow_graceful=False)
    with suppress(RuntimeError):  # what is not final by then is counted as lost
        wait_for(lambda: all(j.state.value in FINAL for j in queue.get_many(ids)), "every job final", 240)
    jobs = queue.get_many(ids)
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state.value] = counts.get(job.state.value, 0) + 1
    return {
        "jobs": len(ids),
        "killed_workers": len(on_victim),
        "succeeded_before_kill": done_before,
        "states": counts,
        "lost": sum(1 for job in jobs if job.state.value not in FINAL),
        "leased_at_kill": len(held),
        "held_at_kill_then_succeeded": sum(1 for j in jobs if j.id in held and j.state.value == "succeeded"),
        "delivered_more_than_once": sum(1 for job in jobs if job.attempts > 1),
        "all_final_after_kill_s": round(time.monotonic() - killed_at, 2),
        "restarts": sum(r.restarts for r in ray_backend.replicas() if r.service == "kill"),
        "replicas_after": [
            (r.node, r.state.value, r.last_error) for r in ray_backend.replicas() if r.service == "kill"
        ],
    }


# -- the run -------------------------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import redis

    from swell.cluster.local import LocalSupervisor
    from swell.cluster.ray import RayCluster
    from swell.queue.base import open_queue

    url = f"{args.redis.rstrip('/')}/{args.db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    files = workdir / "origin"
    for name in ("wm", "cd"):
        (files / name).mkdir(parents=True)
    blob = os.urandom(args.dataset_mb << 20)
    for name in ("wm", "cd"):
        (files / name / WEIGHTS).write_bytes(blob)
    data_dir = workdir / "data"
    ray_config = swell_config(
        [
            service("tput-ray", "sleep_job", 0, max_batch_size=4),
            service("probe", "load_job", 0, lease_seconds=30),
            service("kill", "sleep_job", 0, lease_seconds=2.0, max_batch_size=4),
        ]
    )
    local_config = swell_config([service("tput-local", "sleep_job", 2, max_batch_size=4)])
    queue = open_queue(url)
    results: dict[str, Any] = {}
    with origin(files, args.origin_mbps * 1e6) as origin_url, ray_cluster() as cluster:
        ray_backend = RayCluster(ray_config, url, data_dir, poll_seconds=0.2)
        ray_backend.scale("tput-ray", 2)
        local_backend = LocalSupervisor(local_config, url, workdir / "local")
        started = time.monotonic()
        ray_backend.start()
        local_backend.start()
        try:
            wait_for(lambda: len(serving(ray_backend, "tput-ray")) == 2, "2 ray replicas")
            wait_for(lambda: len(serving(local_backend, "tput-local")) == 2, "2 local replicas")
            results["first_ready_s"] = round(time.monotonic() - started, 2)
            results["throughput"] = throughput(args, queue, {"ray": ray_backend, "local": local_backend})
            results["redis"] = redis_calls(args, queue, client)
            local_backend.stop(timeout=20)
            ray_backend.scale("tput-ray", 0)
            results["scale_up"] = scale_up(args, ray_backend, queue, origin_url, data_dir)
            results["node_kill"] = kill_node(args, cluster, ray_backend, queue)
        finally:
            local_backend.stop(timeout=20)
            ray_backend.stop(timeout=20)
            queue.close()
    return results


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    overhead = results["throughput"]["ray_overhead"]
    lost = results["node_kill"]["lost"] + results["node_kill"]["states"].get("dead", 0)
    return {
        "ray_overhead": {"value": overhead, "target": "<= 0.10", "met": overhead <= 0.10},
        "jobs_lost_on_node_kill": {"value": lost, "target": 0, "met": lost == 0},
    }


def source_state() -> str:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + (" with uncommitted changes" if dirty else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6420", help="a Redis in the namespace")
    parser.add_argument("--db", type=int, default=5, help="the Redis database (flushed first)")
    parser.add_argument("--rounds", type=int, default=4, help="throughput rounds per backend")
    parser.add_argument("--round-seconds", type=float, default=12.0)
    parser.add_argument("--outstanding", type=int, default=16, help="jobs in flight in the closed loop")
    parser.add_argument("--job-ms", type=float, default=5.0, help="what each throughput job sleeps")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle window for Redis calls")
    parser.add_argument("--redis-jobs", type=int, default=400)
    parser.add_argument("--trials", type=int, default=3, help="scale-up trials each, warm and cold")
    parser.add_argument("--dataset-mb", type=int, default=128, help="the size of the probe's dataset")
    parser.add_argument("--origin-mbps", type=float, default=100.0, help="origin's rate cap, MB/s")
    parser.add_argument("--kill-jobs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    require_loopback_only()
    args = parse_args(argv)
    prepare_environment()
    workdir = Path(tempfile.mkdtemp(prefix="swell-cluster-bench-"))
    started = datetime.datetime.now(datetime.UTC)
    results = run_benchmark(args, workdir)
    checked = targets(results)
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
        "workdir": str(workdir),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2, default=str))
    missed = [name for name, t in checked.items() if not t["met"]]
    print(f"targets {'met' if ok else 'MISSED: ' + ', '.join(missed)}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
