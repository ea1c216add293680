"""The Ray backend on a real two-node local Ray cluster (tests/cluster/conftest.py): placement by
resources, fractional GPUs packed on Ray's logical GPUs, the warm-node preference, and a node that
vanishes mid-run without losing a job. The rules that need no cluster are tested first."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from swell.core.config import SwellConfig, parse_config
from swell.core.errors import ConfigError
from swell.core.jobs import JobSpec, JobState
from swell.core.replicas import ReplicaInfo, ReplicaState
from swell.queue.base import open_queue
from tests.cluster.conftest import RayNodes

ray_cluster = pytest.importorskip("swell.cluster.ray", reason="ray is not installed")
RayCluster = ray_cluster.RayCluster
SERVING = (ReplicaState.READY, ReplicaState.BUSY)


# -- no cluster needed --------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["sqlite:///tmp/q.db", "memory://"])
def test_a_queue_the_nodes_cannot_share_is_refused(url: str, tmp_path: Path) -> None:
    cluster = RayCluster(config(resources={}), url, tmp_path)
    with pytest.raises(ConfigError, match="SQLite file lives on one machine") as caught:
        cluster.start()
    assert caught.value.key == "cluster.kind"


def test_auth_mode_is_made_explicit(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t" * 32)
    env: dict[str, str] = {"RAY_AUTH_TOKEN_PATH": str(token_file)}
    assert ray_cluster.configure_auth(env) == "token" and env["RAY_AUTH_MODE"] == "token"
    assert ray_cluster.configure_auth({"RAY_AUTH_MODE": "disabled"}) == "disabled"
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE"):
        ray_cluster.configure_auth({"RAY_AUTH_MODE": "maybe"})
    with pytest.raises(ConfigError, match="no token was given"):
        ray_cluster.configure_auth({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")})


# -- on the two-node cluster --------------------------------------------------------------------


def config(
    *, resources: dict[str, Any], replicas: int = 1, function: str = "echo", **extra: Any
) -> SwellConfig:
    service = {
        "name": "svc",
        "engine": "callable",
        "options": {"function": f"tests.worker.funcs:{function}"},
        "replicas": {"min": replicas, "max": max(replicas, 3)},
        "lease_seconds": 1.0,
        "resources": resources,
        **extra,
    }
    return parse_config({"services": [service]})


@pytest.fixture
def run_cluster(ray_nodes: RayNodes, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    started: list[Any] = []

    def start(cfg: SwellConfig, models: list[str] | None = None, **options: Any) -> Any:
        cluster = RayCluster(cfg, ray_nodes.redis_url, tmp_path / "data", poll_seconds=0.2, **options)
        if models is not None:
            cluster.scale("svc", cfg.services[0].replicas.min, models=models)
        cluster.start()
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.stop(timeout=15)


def wait_for(
    check: Callable[[], bool], what: str, timeout: float = 60.0, state: Callable[[], str] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {state()}"
        time.sleep(0.1)


def serving(cluster: Any) -> list[ReplicaInfo]:
    return [r for r in cluster.replicas() if r.state in SERVING]


def test_a_replica_goes_to_the_node_with_its_resources(
    ray_nodes: RayNodes, run_cluster: Callable[..., Any]
) -> None:
    small = run_cluster(config(resources={"cpus": 0.5, "custom": {"small": 0.5}}, replicas=1))
    wait_for(lambda: len(serving(small)) == 1, "a replica on the `small` node")
    assert serving(small)[0].node == ray_nodes.worker_id


def test_fractional_gpus_pack_onto_the_logical_gpu(
    ray_nodes: RayNodes, run_cluster: Callable[..., Any]
) -> None:
    cluster = run_cluster(config(resources={"cpus": 0.25, "gpus": 0.5}, replicas=3))
    wait_for(lambda: len(serving(cluster)) == 2, "two half-GPU replicas")
    time.sleep(1.0)  # the third must stay unplaced: one GPU holds two halves
    assert {r.node for r in serving(cluster)} == {ray_nodes.head_id}
    assert len(serving(cluster)) == 2 and cluster.statistics().pending == 1


def test_a_replica_prefers_the_node_holding_its_model_warm(
    ray_nodes: RayNodes, run_cluster: Callable[..., Any]
) -> None:
    # Only the worker node advertises m1 warm; the head has room too (and is listed first by Ray).
    cluster = run_cluster(config(resources={"cpus": 0.25}, replicas=1), models=["m1"])
    cluster.scale("svc", 2)
    wait_for(lambda: len(serving(cluster)) == 2, "two ready replicas")
    assert {r.node for r in serving(cluster)} == {ray_nodes.worker_id}
    assert all(r.warm is True and r.model is not None for r in serving(cluster))
    stats = cluster.statistics()
    assert (stats.started, stats.started_warm, stats.warm_share) == (2, 2, 1.0)


def test_with_no_warm_node_a_replica_starts_cold_elsewhere(run_cluster: Callable[..., Any]) -> None:
    cluster = run_cluster(config(resources={"cpus": 0.25}, replicas=1), models=["m2"])
    wait_for(lambda: len(serving(cluster)) == 1, "a ready replica")
    assert serving(cluster)[0].warm is False and cluster.statistics().warm_share == 0.0


def test_hard_warm_cache_waits_for_a_node_holding_the_model(run_cluster: Callable[..., Any]) -> None:
    cluster = run_cluster(
        config(resources={"cpus": 0.25, "warm_cache": "hard"}, replicas=1), models=["nowhere"]
    )
    wait_for(lambda: any(r.last_error and "nowhere" in r.last_error for r in cluster.replicas()), "the wait")
    [replica] = cluster.replicas()
    assert replica.state is ReplicaState.STARTING and cluster.statistics().pending == 1


def test_a_node_that_vanishes_loses_no_job(ray_nodes: RayNodes, run_cluster: Callable[..., Any]) -> None:
    extra = ray_nodes.add_node(num_cpus=1, resources={"swell_warm_victim": 1000})
    queue = open_queue(ray_nodes.redis_url)
    # The replica prefers the extra node, which holds its model warm.
    cluster = run_cluster(config(resources={"cpus": 0.5}, replicas=1, function="sleep"), models=["victim"])
    wait_for(lambda: any(r.node == extra.node_id for r in serving(cluster)), "a replica on the extra node")
    [victim] = [r for r in serving(cluster) if r.node == extra.node_id]
    ids = [queue.submit(JobSpec("svc", {"seconds": 0.3}, max_attempts=5))[0].id for _ in range(8)]
    wait_for(lambda: any(queue.get(i).state is JobState.LEASED for i in ids), "a leased job")
    os.kill(victim.pid or 0, signal.SIGKILL)  # a vanishing node takes its processes with it
    ray_nodes.cluster.remove_node(extra, allow_graceful=False)
    done = lambda: all(queue.get(i).state is JobState.SUCCEEDED for i in ids)  # noqa: E731
    wait_for(
        done, "every job done", 120.0, lambda: f"{[queue.get(i).state for i in ids]} {cluster.replicas()}"
    )
    restarted = [r for r in cluster.replicas() if r.restarts]
    assert restarted and restarted[0].node != extra.node_id
    assert restarted[0].last_error is not None
    queue.close()


def test_worker_args_carry_the_gpu_share(ray_nodes: RayNodes, tmp_path: Path) -> None:
    cluster = RayCluster(config(resources={"gpus": 0.5}), ray_nodes.redis_url, tmp_path, drain_seconds=4.0)
    slot = ray_cluster.RaySlot(id=f"x-{uuid.uuid4().hex[:4]}", service=cluster.config.services[0])
    from swell.cluster import placement

    args = cluster._worker_args(slot, placement.request_for(slot.service.resources))
    assert args.gpu_fraction == 0.5 and args.drain_seconds == 4.0
    assert "--gpu-fraction" in args.argv()
