"""The live loop in `enforce` mode over the real parts `swell up` wires together: a SQLite queue file,
the `LocalSupervisor` and its worker processes running jobs on the callable engine."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from swell.brain.live import LiveLoop
from swell.cluster.local import LocalSupervisor
from swell.core.clock import SystemClock
from swell.core.config import SwellConfig, parse_config
from swell.core.jobs import JobSpec, JobState
from swell.core.replicas import ReplicaState
from swell.queue.base import QueueBackend, open_queue

SERVING = (ReplicaState.STARTING, ReplicaState.LOADING, ReplicaState.READY, ReplicaState.BUSY)


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


Parts = tuple[LiveLoop, QueueBackend, LocalSupervisor, CollectorRegistry]


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Callable[..., Parts]]:
    made: list[tuple[QueueBackend, LocalSupervisor]] = []

    def build(**brain: Any) -> Parts:
        config: SwellConfig = parse_config({
            "services": [{
                "name": "svc", "engine": "callable", "options": {"function": "tests.worker.funcs:sleep"},
                "replicas": {"min": 1, "max": 3}, "lease_seconds": 5.0,
            }],
            "brain": {"mode": "enforce", "tick_seconds": 1, **brain},
        })  # fmt: skip
        url = f"sqlite:///{tmp_path / 'q.db'}"
        clock = SystemClock()
        queue = open_queue(url, clock=clock)
        supervisor = LocalSupervisor(config, url, tmp_path, clock=clock, hang_seconds=10.0)
        made.append((queue, supervisor))
        supervisor.start()
        registry = CollectorRegistry()
        return (
            LiveLoop(config, queue, supervisor, clock=clock, registry=registry),
            queue,
            supervisor,
            registry,
        )

    yield build
    for queue, supervisor in made:
        supervisor.stop(timeout=10)
        queue.close()


def live(supervisor: LocalSupervisor) -> int:
    return sum(1 for r in supervisor.replicas() if r.state in SERVING)


def submit(queue: QueueBackend, n: int, seconds: float) -> list[str]:
    return [queue.submit(JobSpec("svc", {"seconds": seconds}))[0].id for _ in range(n)]


def test_enforce_scales_real_workers_up_to_max_and_back_to_min(parts: Callable[..., Parts]) -> None:
    loop, queue, supervisor, registry = parts(policy="queue-length", options={"cooldown": 0})
    wait_for(lambda: live(supervisor) == 1)
    ids = submit(queue, 8, 1.5)
    loop.tick()
    assert supervisor.desired("svc") == 3  # 8 jobs in the system, clamped to replicas.max
    wait_for(lambda: live(supervisor) == 3)
    wait_for(lambda: sum(r.state is ReplicaState.BUSY for r in supervisor.replicas()) >= 2)
    wait_for(lambda: all(queue.get(i).state is JobState.SUCCEEDED for i in ids))
    loop.tick()
    assert supervisor.desired("svc") == 1  # idle: down to replicas.min, never below
    wait_for(lambda: live(supervisor) == 1)  # two workers drained
    assert registry.get_sample_value("swell_brain_planned_replicas", {"service": "svc"}) == 1
    view = loop.plan_view()["svc"]["plan"]
    assert view["mode"] == "enforce" and view["replicas"] == 1


def test_enforce_falls_back_to_reactive_while_jobs_miss_the_slo(parts: Callable[..., Parts]) -> None:
    loop, queue, supervisor, registry = parts(
        policy="static",
        reactive_policy="queue-length",
        slo_wait_seconds=0.5,
        fallback_window_seconds=3,
    )
    wait_for(lambda: live(supervisor) == 1)
    loop.tick()
    assert supervisor.desired("svc") == 1  # the primary's plan while nothing is late
    ids = submit(queue, 6, 2.0)
    time.sleep(1.0)  # one worker: the queued jobs are already past the 0.5 s SLO wait
    loop.tick()
    plan = loop.plan_view()["svc"]["plan"]
    assert "SLO" in plan["reason"] and plan["replicas"] == 3
    assert supervisor.desired("svc") == 3
    attainment = registry.get_sample_value("swell_brain_slo_attainment", {"service": "svc"})
    assert attainment is not None and attainment <= 1 / 6  # the first job may start in time, no other
    wait_for(lambda: all(queue.get(i).state is not JobState.QUEUED for i in ids))
    loop.tick()  # the late jobs have just started (a job counts when it starts): still in the window
    assert "SLO" in loop.plan_view()["svc"]["plan"]["reason"]
    wait_for(lambda: all(queue.get(i).state is JobState.SUCCEEDED for i in ids))
    time.sleep(3.1)
    loop.tick()  # the window has passed: back to the primary
    assert supervisor.desired("svc") == 1
    assert "SLO" not in loop.plan_view()["svc"]["plan"]["reason"]
    wait_for(lambda: live(supervisor) == 1)
