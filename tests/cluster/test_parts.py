"""The cluster's pure parts: the worker contract's JSON, the registry, placement, GPU shares, the fake."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swell.cluster import gpu, placement
from swell.cluster.base import Cluster, open_cluster
from swell.cluster.fake import FakeCluster
from swell.cluster.local import LocalSupervisor
from swell.core.clock import ManualClock
from swell.core.config import Resources, SwellConfig, parse_config
from swell.core.errors import ConfigError
from swell.core.replicas import ReplicaState
from swell.worker import contract
from swell.worker.contract import Drained, GpuShare, WorkerState, WorkerStatus

# -- the worker contract ------------------------------------------------------------------------

statuses = st.builds(
    WorkerStatus,
    state=st.sampled_from(list(WorkerState)),
    heartbeat=st.floats(0, 2e9),
    model=st.none() | st.text(max_size=20),
    phases=st.dictionaries(st.sampled_from(["fetch", "load", "warmup"]), st.floats(0, 1e4)),
    jobs_done=st.integers(0, 10**9),
    jobs_failed=st.integers(0, 10**9),
    jobs_handed_back=st.integers(0, 10**9),
    error=st.none() | st.text(max_size=50),
    drained=st.none() | st.builds(Drained, st.integers(0, 100), st.integers(0, 100), st.floats(0, 100)),
    gpu=st.none() | st.builds(GpuShare, st.integers(0, 2**40), st.integers(1, 2**40), st.floats(0.01, 1)),
    node=st.none() | st.text(max_size=20),
)


@given(statuses)
def test_a_status_survives_its_json(status: WorkerStatus) -> None:
    assert WorkerStatus.from_dict(json.loads(json.dumps(status.to_dict()))) == status


def test_a_status_from_another_version_still_reads() -> None:
    status = WorkerStatus.from_dict({"state": "hibernating", "heartbeat": "soon", "new_field": 1})
    assert (status.state, status.heartbeat, status.jobs_done) == (WorkerState.FAILED, 0.0, 0)
    assert WorkerStatus.from_dict({}).state is WorkerState.STARTING


def test_the_status_file_is_atomic_private_and_beats_by_mtime(tmp_path: Path) -> None:
    path = tmp_path / "replicas" / "r1.json"
    old = os.umask(0o022)
    try:
        contract.publish(path, WorkerStatus(state=WorkerState.READY, heartbeat=100.0, model="m"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    read = contract.load(path)
    assert read is not None and read.model == "m" and read.heartbeat == path.stat().st_mtime
    assert contract.load(tmp_path / "none.json") is None
    assert [p.name for p in path.parent.iterdir()] == ["r1.json"], "no temporary file left behind"


# -- the registry -------------------------------------------------------------------------------


def cfg(kind: str = "local", **service: object) -> SwellConfig:
    base = {"name": "svc", "engine": "callable", "options": {"function": "builtins:dict"}}
    return parse_config({"cluster": {"kind": kind}, "services": [{**base, **service}]})


def test_the_registry_opens_each_kind(tmp_path: Path) -> None:
    assert isinstance(open_cluster(cfg("local"), "memory://", tmp_path), LocalSupervisor)
    fake = open_cluster(cfg("swell.cluster.fake:FakeCluster"), "memory://", tmp_path)
    assert isinstance(fake, FakeCluster) and isinstance(fake, Cluster)
    with pytest.raises(ConfigError) as caught:
        open_cluster(cfg("kubernetes"), "memory://", tmp_path)
    assert caught.value.key == "cluster.kind" and "local" in str(caught.value)
    with pytest.raises(ConfigError, match="cannot import"):
        open_cluster(cfg("nowhere.at.all:Cluster"), "memory://", tmp_path)


# -- placement and GPU shares -------------------------------------------------------------------


def nodes() -> list[placement.Node]:
    return [
        placement.Node("a", {"CPU": 4, "GPU": 1}, frozenset()),
        placement.Node("b", {"CPU": 1}, frozenset({"m1"})),
        placement.Node("c", {"CPU": 8, "GPU": 2}, frozenset({"m1"})),
    ]


def test_a_replica_goes_to_the_roomiest_warm_node() -> None:
    request = placement.Request(cpus=1, gpus=0.5)
    assert placement.place(request, "m1", nodes()) == placement.Placement(node="c", soft=True, warm=True)
    assert placement.place(request, "m1", nodes(), "hard").node == "c"
    assert placement.place(request, None, nodes()) == placement.Placement()
    assert placement.place(request, "m1", nodes(), "off") == placement.Placement()


def test_no_warm_node_with_room_is_cold_when_soft_and_a_wait_when_hard() -> None:
    request = placement.Request(cpus=2)
    full = [placement.Node("b", {"CPU": 1}, frozenset({"m1"}))]
    assert placement.place(request, "m1", full) == placement.Placement(warm=False)
    waiting = placement.place(request, "m1", full, "hard")
    assert waiting.wait is not None and "has room" in waiting.wait
    assert "holds it" in (placement.place(request, "m9", nodes(), "hard").wait or "")


def test_resources_become_a_ray_request() -> None:
    resources = Resources(gpus=0.25, cpus=2, memory="1.5Gi", gpu_kind="a10g", custom={"fast": 1})
    request = placement.request_for(resources)
    assert request.memory == int(1.5 * 2**30) and request.gpus == 0.25
    assert request.custom == {"fast": 1, "swell_gpu_a10g": placement.TOKEN}
    assert placement.parse_quantity("512M") == 512 * 10**6
    assert placement.warm_from_resources({"CPU": 1, "swell_warm_sd15": 1000}) == {"sd15"}


def test_gpu_requests_pack_by_measured_memory() -> None:
    measured = GpuShare(footprint_bytes=2 * 2**30, total_bytes=80 * 2**30, cap_fraction=0.5)
    assert gpu.gpu_request(0.5, None) == 0.5
    assert gpu.gpu_request(0.5, measured) == pytest.approx(0.05), "2 GiB x 1.25 of 80 GiB rounds up to 0.05"
    big = GpuShare(footprint_bytes=70 * 2**30, total_bytes=80 * 2**30, cap_fraction=1.0)
    assert gpu.gpu_request(0.5, big) == 0.5, "never more than configured"
    assert gpu.gpu_request(1.0, measured) == 1.0, "a whole GPU stays whole"
    assert gpu.fits(2 * 2**30, 80 * 2**30, 0.03) is False and gpu.fits(2 * 2**30, 80 * 2**30, 0.05) is True


def test_without_cuda_the_cap_is_a_no_op() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the cap is exercised on a GPU machine")
    assert gpu.cap_to_share(0.5) is None and gpu.cap_to_share(None) is None


# -- the fake -----------------------------------------------------------------------------------


def fake(**options: object) -> tuple[FakeCluster, ManualClock]:
    clock = ManualClock(0.0)
    config = cfg("fake", options={"function": "builtins:dict"}, replicas={"min": 1, "max": 4})
    cluster = FakeCluster(config, clock=clock, **options)  # type: ignore[arg-type]
    cluster.start()
    return cluster, clock


def states(cluster: FakeCluster) -> list[str]:
    return sorted(r.state.value for r in cluster.replicas())


def test_fake_replicas_load_on_virtual_time_warm_faster() -> None:
    cluster, clock = fake(load_seconds=30, warm_load_seconds=3, nodes=2, warm={"node-1": ["m1"]})
    cluster.scale("svc", 2, models=["m1"])
    assert states(cluster) == ["loading", "loading"]
    clock.advance(3)
    by_node = {r.node: r.state for r in cluster.replicas()}
    assert by_node == {"node-1": ReplicaState.READY, "node-0": ReplicaState.LOADING}
    stats = cluster.statistics()
    assert (stats.started, stats.started_warm) == (2, 1), "the first start had no model to find warm"


def test_fake_kill_restarts_and_scale_down_drains() -> None:
    cluster, clock = fake(restart_seconds=1, drain_seconds=2)
    [replica] = cluster.replicas()
    cluster.kill(replica.id)
    assert states(cluster) == ["dead"]
    clock.advance(1)
    assert states(cluster) == ["ready"] and cluster.replicas()[0].restarts == 1
    cluster.scale("svc", 3)
    cluster.set_busy(cluster.replicas()[0].id)
    cluster.scale("svc", 1)
    assert states(cluster) == ["busy", "draining", "draining"], "the busy one is kept"
    clock.advance(2)
    assert states(cluster) == ["busy", "stopped", "stopped"]
