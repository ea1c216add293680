"""The local supervisor with real worker processes over a real SQLite file."""

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from swell.cluster.local import LocalSupervisor
from swell.core.config import parse_config
from swell.core.jobs import JobSpec, JobState
from swell.core.replicas import ReplicaState
from swell.queue.base import open_queue


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[LocalSupervisor]:
    config = parse_config(
        {
            "services": [
                {
                    "name": "svc",
                    "engine": "callable",
                    "options": {"function": "tests.worker.funcs:echo"},
                    "replicas": {"min": 2, "max": 3},
                    "max_batch_size": 4,
                    "lease_seconds": 1.0,
                }
            ]
        }
    )
    sup = LocalSupervisor(config, f"sqlite:///{tmp_path / 'q.db'}", tmp_path, hang_seconds=2.0)
    sup.start()
    yield sup
    sup.stop(timeout=10)


def ready(sup: LocalSupervisor) -> list[int]:
    return [r.pid or 0 for r in sup.replicas() if r.state in (ReplicaState.READY, ReplicaState.BUSY)]


def test_keeps_replicas_and_runs_jobs(supervisor: LocalSupervisor, tmp_path: Path) -> None:
    wait_for(lambda: len(ready(supervisor)) == 2)
    queue = open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    ids = [queue.submit(JobSpec("svc", {"i": i}))[0].id for i in range(10)]
    wait_for(lambda: all(queue.get(i).state == JobState.SUCCEEDED for i in ids))
    wait_for(lambda: sum(r.jobs_done for r in supervisor.replicas()) == 10)


def test_restarts_a_killed_worker(supervisor: LocalSupervisor) -> None:
    wait_for(lambda: len(ready(supervisor)) == 2)
    victim = ready(supervisor)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(ready(supervisor)) == 2 and victim not in ready(supervisor))
    assert sum(r.restarts for r in supervisor.replicas()) == 1
    [restarted] = [r for r in supervisor.replicas() if r.restarts]
    assert (restarted.last_error, restarted.crash_streak) == ("killed by SIGKILL", 0)


def test_restarts_a_hung_worker(supervisor: LocalSupervisor) -> None:
    wait_for(lambda: len(ready(supervisor)) == 2)
    victim = ready(supervisor)[0]
    os.kill(victim, signal.SIGSTOP)
    wait_for(lambda: len(ready(supervisor)) == 2 and victim not in ready(supervisor))
    assert sum(r.restarts for r in supervisor.replicas()) == 1
    [restarted] = [r for r in supervisor.replicas() if r.restarts]
    assert restarted.last_error is not None and restarted.last_error.startswith("stopped answering")


def test_scale_up_and_down_within_bounds(supervisor: LocalSupervisor) -> None:
    supervisor.scale("svc", 10)
    assert supervisor.desired("svc") == 3
    wait_for(lambda: len(ready(supervisor)) == 3)
    supervisor.scale("svc", 0)
    assert supervisor.desired("svc") == 2
    wait_for(lambda: len([r for r in supervisor.replicas() if r.state != ReplicaState.STOPPED]) == 2)


def test_replicas_start_holding_the_checkpoints_the_brain_names(tmp_path: Path) -> None:
    """`scale(service, n, models=...)` deals the checkpoints over the replicas it starts: each
    worker loads its own at start (`WorkerArgs.models`) and reports it held."""
    config = parse_config(
        {
            "services": [
                {
                    "name": "ckpt",
                    "engine": "tests.worker.engines:CheckpointEngine",
                    "options": {"load_seconds": 0.01},
                    "models": {name: {"checkpoint": name} for name in ("a", "b", "c")},
                    "replicas": {"min": 0, "max": 2},
                }
            ]
        }
    )
    sup = LocalSupervisor(config, f"sqlite:///{tmp_path / 'q.db'}", tmp_path)
    sup.start()
    try:
        sup.scale("ckpt", 2, models=["c", "b"])
        wait_for(lambda: len(ready(sup)) == 2)
        assert sorted(r.models for r in sup.replicas()) == [("b",), ("c",)]
    finally:
        sup.stop(timeout=10)


def test_a_service_without_checkpoints_preloads_nothing() -> None:
    from swell.cluster.base import next_model, preload

    config = parse_config(
        {
            "services": [
                {"name": "svc", "engine": "callable", "options": {"function": "tests.worker.funcs:echo"}}
            ]
        }
    )
    service = config.services[0]
    assert next_model(service, ("wm",), []) == "wm"  # a dataset-only service: its dataset is its model
    assert preload(service, "wm") == ()


def test_next_model_spreads_the_named_checkpoints() -> None:
    from swell.cluster.base import next_model

    config = parse_config(
        {
            "services": [
                {
                    "name": "s",
                    "engine": "callable",
                    "options": {"function": "tests.worker.funcs:echo"},
                    "models": {"a": {}, "b": {}},
                }
            ]
        }
    )
    service = config.services[0]
    assert next_model(service, ("a", "b"), []) == "a"
    assert next_model(service, ("a", "b"), ["a"]) == "b"
    assert next_model(service, ("a", "b"), ["a", "b", None]) == "a"
    assert next_model(service, (), ["a"]) is None
