"""One contract suite for every Cluster backend: local processes, the fake, and Ray.

Each backend runs the same service (the callable engine's echo; 1..2 replicas) and must: start its
minimum replicas and get them ready, clamp `scale` to the bounds, drain on scale-down so that what
is left alive equals the desired count, run jobs from the shared queue, refuse an unknown service,
report the same `statistics()` fields, and leave nothing running after `stop`. The fake runs on a
ManualClock (time moves only when the suite says so); local and Ray on real processes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from swell.cluster.base import Cluster, ClusterStats, open_cluster
from swell.core.clock import ManualClock
from swell.core.config import SwellConfig, parse_config
from swell.core.errors import ServiceNotFound
from swell.core.jobs import JobSpec, JobState
from swell.core.replicas import ReplicaState
from swell.queue.base import QueueBackend, open_queue

SERVING = (ReplicaState.READY, ReplicaState.BUSY)
LIVE = (ReplicaState.STARTING, ReplicaState.LOADING, ReplicaState.READY, ReplicaState.BUSY)


def contract_config(kind: str, service: str) -> SwellConfig:
    return parse_config(
        {
            "cluster": {"kind": kind},
            "services": [
                {
                    "name": service,
                    "engine": "callable",
                    "options": {"function": "tests.worker.funcs:echo"},
                    "replicas": {"min": 1, "max": 2},
                    "lease_seconds": 2.0,
                    "resources": {"cpus": 0.5},
                }
            ],
        }
    )


@dataclass
class Harness:
    cluster: Cluster
    service: str
    queue: QueueBackend | None  # None: the backend runs no jobs (the fake)
    advance: Callable[[float], None]
    timeout: float

    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        waited = 0.0
        while not predicate():
            assert waited < self.timeout, f"timed out waiting for {what}: {self.cluster.replicas()}"
            self.advance(0.1)
            waited += 0.1

    def serving(self) -> int:
        return sum(1 for r in self.cluster.replicas() if r.state in SERVING)

    def live(self) -> int:
        return sum(1 for r in self.cluster.replicas() if r.state in LIVE)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


@pytest.fixture(params=["local", "fake", "ray"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    kind = request.param
    service = f"c{uuid.uuid4().hex[:8]}"
    config = contract_config(kind, service)
    if kind == "fake":
        clock = ManualClock(1000.0)
        cluster = open_cluster(
            config, "memory://", tmp_path, clock=clock, load_seconds=3.0, drain_seconds=1.0
        )
        harness = Harness(cluster, service, None, clock.advance, 60.0)
    elif kind == "local":
        url = f"sqlite:///{tmp_path / 'q.db'}"
        cluster = open_cluster(config, url, tmp_path / "data")
        harness = Harness(cluster, service, open_queue(url), _sleep, 60.0)
    else:
        nodes = request.getfixturevalue("ray_nodes")
        cluster = open_cluster(config, nodes.redis_url, tmp_path / "data", poll_seconds=0.2)
        harness = Harness(cluster, service, open_queue(nodes.redis_url), _sleep, 90.0)
    cluster.start()
    try:
        yield harness
    finally:
        cluster.stop(timeout=15)
        if harness.queue is not None:
            harness.queue.close()


def test_is_a_cluster_and_starts_its_minimum(harness: Harness) -> None:
    assert isinstance(harness.cluster, Cluster)
    assert harness.cluster.desired(harness.service) == 1
    harness.wait_for(lambda: harness.serving() == 1, "one ready replica")
    [replica] = harness.cluster.replicas()
    assert replica.service == harness.service and replica.restarts == 0 and replica.phases


def test_scale_is_clamped_and_scale_down_drains(harness: Harness) -> None:
    harness.cluster.scale(harness.service, 10)
    assert harness.cluster.desired(harness.service) == 2
    harness.wait_for(lambda: harness.serving() == 2, "two ready replicas")
    harness.cluster.scale(harness.service, 0)
    assert harness.cluster.desired(harness.service) == 1
    harness.wait_for(lambda: harness.live() == 1, "one live replica after the drain")
    states = sorted(r.state.value for r in harness.cluster.replicas())
    assert ReplicaState.DEAD.value not in states, "a drained replica is stopped, not dead"
    with pytest.raises(ServiceNotFound):
        harness.cluster.scale("nope", 1)


def test_runs_jobs_from_the_shared_queue(harness: Harness) -> None:
    if harness.queue is None:
        pytest.skip("the fake runs no jobs: it models replicas only")
    queue = harness.queue
    ids = [queue.submit(JobSpec(harness.service, {"i": i}))[0].id for i in range(6)]
    harness.wait_for(lambda: all(queue.get(i).state is JobState.SUCCEEDED for i in ids), "six jobs done")
    harness.wait_for(lambda: sum(r.jobs_done for r in harness.cluster.replicas()) == 6, "counted")


def test_statistics_have_the_same_fields_everywhere(harness: Harness) -> None:
    harness.wait_for(lambda: harness.serving() == 1, "one ready replica")
    stats = harness.cluster.statistics()
    assert isinstance(stats, ClusterStats)
    assert stats.desired == {harness.service: 1} and stats.started >= 1
    assert sum(stats.states.values()) == len(harness.cluster.replicas())
    public = stats.to_dict()
    assert {"kind", "desired", "states", "restarts", "started", "started_warm", "warm_share"} <= set(public)


def test_stop_leaves_nothing_running(harness: Harness) -> None:
    harness.wait_for(lambda: harness.serving() == 1, "one ready replica")
    harness.cluster.stop(timeout=15)
    assert harness.live() == 0
