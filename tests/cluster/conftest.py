"""A real local Ray cluster of two nodes with different resources, for the Ray backend's tests.

Ray picks the machine's outward address for its nodes; so these tests run only inside a network
namespace whose only interface is loopback (`ip netns add swell-ray; ip netns exec swell-ray ip link
set lo up; ip netns exec swell-ray <pytest>`, as .ci/run does), where nothing can leave 127.0.0.1,
and skip elsewhere with that reason. Token authentication is set explicitly: RAY_AUTH_MODE=token and
a fresh RAY_AUTH_TOKEN for the cluster's processes and the driver alike. The queue is the Redis at
SWELL_TEST_REDIS_URL (started inside the same namespace), on a database of its own.

The cluster (`ray_nodes`) is started once per session, only when a test asks for it:
- head: 2 CPUs, 1 logical GPU, resource `head`;
- worker: 2 CPUs, no GPU, resource `small`, and `swell_warm_m1`: its node cache holds model m1.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import ROOT, loopback_only

RAY_DB = 11  # the Redis database the Ray tests' queues use


@dataclass
class RayNodes:
    cluster: Any  # ray.cluster_utils.Cluster
    address: str
    redis_url: str
    head_id: str
    worker_id: str

    def add_node(self, **options: Any) -> Any:
        return self.cluster.add_node(node_ip_address="127.0.0.1", **options)


def ray_skip_reason() -> str | None:
    if not loopback_only():
        return "Ray tests run only in a loopback-only network namespace (see tests/cluster/conftest.py)"
    if not os.environ.get("SWELL_TEST_REDIS_URL"):
        return "Ray tests need SWELL_TEST_REDIS_URL (a Redis inside the same namespace)"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install 'swell[ray]')"
    return None


def redis_url(db: int = RAY_DB) -> str:
    base = os.environ["SWELL_TEST_REDIS_URL"].rsplit("/", 1)[0]
    return f"{base}/{db}"


@pytest.fixture(scope="session")
def ray_nodes() -> Iterator[RayNodes]:
    reason = ray_skip_reason()
    if reason:
        pytest.skip(reason)
    import ray
    from ray.cluster_utils import Cluster

    from swell.cluster.ray import refresh_auth

    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    refresh_auth()  # ray may have been imported (and read the mode) before these were set
    paths = [str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)  # nodes import tests.worker.funcs
    head_args = {"num_cpus": 2, "num_gpus": 1, "resources": {"head": 1}, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={**head_args, "node_ip_address": "127.0.0.1"})
    worker = cluster.add_node(
        num_cpus=2, num_gpus=0, resources={"small": 1, "swell_warm_m1": 1000}, node_ip_address="127.0.0.1"
    )
    ray.init(address=cluster.address, namespace="swell-test", log_to_driver=False)
    try:
        cluster.wait_for_nodes()
        head = cluster.head_node
        assert head is not None
        yield RayNodes(cluster, cluster.address, redis_url(), head.node_id, worker.node_id)
    finally:
        ray.shutdown()
        cluster.shutdown()
