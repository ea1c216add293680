"""The Ray backend past the first review, on the real two-node local Ray cluster (conftest.py):
result files through the object store when a node's data dir is not the gateway's, replicas that
outlive the gateway process and are adopted by the next one, the queue's password kept out of the
task spec Ray's GCS (and so its dashboard and state API) holds, and fractional GPUs packed by
measured memory on Ray's logical GPU."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from swell.core.config import Settings, SwellConfig, parse_config
from swell.core.jobs import JobSpec, JobState
from swell.queue.base import open_queue
from swell.worker.contract import GpuShare
from tests.cluster.conftest import RayNodes
from tests.cluster.test_ray import serving, wait_for
from tests.support import ROOT

ray_cluster = pytest.importorskip("swell.cluster.ray", reason="ray is not installed")
RayCluster = ray_cluster.RayCluster
API_KEY = "fleet-test-key"


def fleet_config(
    namespace: str,
    *,
    function: str = "tests.worker.funcs:echo",
    resources: dict[str, Any] | None = None,
    replicas: int = 1,
    **cluster: Any,
) -> SwellConfig:
    service = {
        "name": f"svc-{namespace[-6:]}",
        "engine": "callable",
        "options": {"function": function},
        "replicas": {"min": replicas, "max": 3},
        "lease_seconds": 1.0,
        "resources": resources or {"cpus": 0.25},
    }
    return parse_config(
        {"cluster": {"kind": "ray", "namespace": namespace, **cluster}, "services": [service]}
    )


@pytest.fixture
def namespace() -> str:
    return f"swell-fleet-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def clusters(ray_nodes: RayNodes) -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for cluster in started:
        cluster.stop(timeout=15)


def named(namespace: str) -> list[str]:
    import ray

    return sorted(
        e["name"] for e in ray.util.list_named_actors(all_namespaces=True) if e["namespace"] == namespace
    )


def run_job(queue: Any, service: str, item: dict[str, Any]) -> Any:
    [job] = [queue.submit(JobSpec(service, item, max_attempts=3))[0]]
    wait_for(lambda: queue.get(job.id).state.final, "the job to finish", 60.0)
    return queue.get(job.id)


# -- item 1: result files through the object store ----------------------------------------------


def test_a_nodes_result_file_goes_through_the_object_store_and_the_gateway_serves_it(
    ray_nodes: RayNodes, clusters: list[Any], namespace: str, tmp_path: Path
) -> None:
    from swell.gateway.app import create_app

    bucket, node_dir, gateway_dir = tmp_path / "bucket", tmp_path / "node", tmp_path / "gateway"
    cfg = fleet_config(namespace, function="tests.cluster.funcs:write_file", results_url=f"file://{bucket}")
    service = cfg.services[0].name
    cluster = RayCluster(cfg, ray_nodes.redis_url, node_dir, poll_seconds=0.2)
    cluster.start()
    clusters.append(cluster)
    queue = open_queue(ray_nodes.redis_url)
    try:
        job = run_job(queue, service, {"text": "from a node"})
        assert job.state is JobState.SUCCEEDED, job.error
        assert job.result == {"file": "out.txt"}
        assert (bucket / job.id / "out.txt").read_bytes() == b"from a node"
        assert not (node_dir / "files").exists(), "the node wrote its file to its own disk"

        settings = Settings(data_dir=gateway_dir, api_key=API_KEY)
        app = create_app(cfg, settings, queue, replicas=cluster)

        async def fetch(name: str) -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as client:
                return await client.get(f"/v1/jobs/{job.id}/files/{name}")

        served = asyncio.run(fetch("out.txt"))
        assert served.status_code == 200, served.text
        assert served.content == b"from a node" and served.headers["content-type"].startswith("text/plain")
        assert asyncio.run(fetch("missing.txt")).status_code == 404
    finally:
        queue.close()


# -- item 3: replicas outlive the gateway process ------------------------------------------------


def test_replicas_outlive_the_gateway_process_and_the_next_one_adopts_them(
    ray_nodes: RayNodes, clusters: list[Any], namespace: str, tmp_path: Path
) -> None:
    cfg = fleet_config(namespace)
    raw = cfg.model_dump(mode="json", exclude_defaults=True)
    driver = [sys.executable, "-m", "tests.cluster.adopt_driver", json.dumps(raw)]
    driver += [ray_nodes.redis_url, str(tmp_path), ray_nodes.address]
    first = subprocess.run(driver, capture_output=True, text=True, timeout=150, cwd=ROOT, env=os.environ)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    [left] = json.loads(first.stdout.strip().splitlines()[-1])
    assert named(namespace), "the replica's actor died with the process that started it"

    second = RayCluster(cfg, ray_nodes.redis_url, tmp_path, poll_seconds=0.2)
    second.start()
    clusters.append(second)
    wait_for(lambda: len(serving(second)) == 1, "the adopted replica", 30.0, lambda: str(second.replicas()))
    [adopted] = serving(second)
    assert (adopted.id, adopted.pid, adopted.restarts) == (left["id"], left["pid"], 0)
    assert second.statistics().started == 0, "the adopted replica was not started again"
    queue = open_queue(ray_nodes.redis_url)
    try:
        assert run_job(queue, cfg.services[0].name, {"n": 1}).state is JobState.SUCCEEDED
    finally:
        queue.close()

    second.release()  # a second gateway restart; then `swell down` drains what is left
    RayCluster(cfg, ray_nodes.redis_url, tmp_path).down(timeout=20)
    wait_for(lambda: not named(namespace), "no replica left in the namespace", 20.0)
    with pytest.raises(ProcessLookupError):
        os.kill(left["pid"], 0)


def test_a_replica_of_a_changed_service_is_drained_not_adopted(
    ray_nodes: RayNodes, clusters: list[Any], namespace: str, tmp_path: Path
) -> None:
    first = RayCluster(fleet_config(namespace), ray_nodes.redis_url, tmp_path, poll_seconds=0.2)
    first.start()
    wait_for(lambda: len(serving(first)) == 1, "a ready replica")
    [old] = serving(first)
    first.release()

    changed = fleet_config(namespace, function="tests.worker.funcs:sleep")
    second = RayCluster(changed, ray_nodes.redis_url, tmp_path, poll_seconds=0.2)
    second.start()
    clusters.append(second)
    wait_for(lambda: len(serving(second)) == 1 and serving(second)[0].id != old.id, "a fresh replica")
    wait_for(lambda: old.id not in {r.id for r in second.replicas()}, "the old replica reaped", 30.0)
    assert len(named(namespace)) == 1


# -- item 4: the queue's password is not in the task spec ----------------------------------------


def test_the_queue_password_is_not_in_the_actors_task_spec(ray_nodes: RayNodes, tmp_path: Path) -> None:
    """Ray's actor table and task events (what the dashboard and the state API show) carry no
    arguments; the creation task spec, arguments inline, is kept by the GCS: in Redis when the GCS
    is fault tolerant. So the check reads that Redis, on a head of its own (a process: one driver
    per process); a canary actor given the password as a plain argument shows the check sees it."""
    password = f"pw-{uuid.uuid4().hex}"
    url = ray_nodes.redis_url.replace("redis://", f"redis://:{password}@")
    redis_at = urlsplit(ray_nodes.redis_url).netloc
    storage = f"swell-spec-{uuid.uuid4().hex[:8]}"
    driver = [sys.executable, "-m", "tests.cluster.spec_driver", redis_at, str(tmp_path), storage]
    env = {**os.environ, "SPEC_QUEUE_URL": url}
    ran = subprocess.run(driver, capture_output=True, text=True, timeout=150, cwd=ROOT, env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr[-3000:]
    found = json.loads(ran.stdout.strip().splitlines()[-1])
    assert found["placed"], "the replica's actor was never placed"
    assert found["canary"], "the GCS records hold no task spec: the check would see nothing"
    assert found["replica"] == [], f"the password is in the GCS records {found['replica']}"


# -- item 5: packing by measured memory on Ray's logical GPU ------------------------------------


def test_a_measured_footprint_packs_more_replicas_onto_the_logical_gpu(
    ray_nodes: RayNodes, clusters: list[Any], namespace: str, tmp_path: Path
) -> None:
    cfg = fleet_config(namespace, resources={"cpus": 0.25, "gpus": 0.5}, replicas=3)
    name = cfg.services[0].name
    cluster = RayCluster(cfg, ray_nodes.redis_url, tmp_path, poll_seconds=0.2)
    # What a replica's worker reports after load on CUDA (`WorkerStatus.gpu`): 2 GiB of an 80 GiB GPU.
    cluster._measured[name] = GpuShare(footprint_bytes=2 * 2**30, total_bytes=80 * 2**30, cap_fraction=0.5)
    cluster.start()
    clusters.append(cluster)
    wait_for(lambda: len(serving(cluster)) == 3, "three replicas on one logical GPU", 60.0)
    assert {r.node for r in serving(cluster)} == {ray_nodes.head_id}, "the head holds the only GPU"
    # At the configured 0.5 each only two would fit (test_ray.py shows the third waiting).
    assert cluster.statistics().pending == 0
