"""Prometheus metrics: arrivals, rejections, depth, replicas, and job histograms read from the queue."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

from swell.core.clock import ManualClock
from swell.core.errors import Unavailable
from swell.core.jobs import JobSpec
from swell.core.replicas import ReplicaInfo, ReplicaState
from swell.gateway.metrics import GatewayMetrics
from swell.queue.base import QueueBackend, open_queue
from tests.gateway.helpers import MakeGateway

START = 1_700_000_000.0


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def finish(queue: QueueBackend, job_id: str) -> None:
    [leased] = queue.lease("echo", "w", max_jobs=1)
    assert leased.id == job_id
    queue.complete(job_id, "w", {"ok": True})


@pytest.mark.anyio
async def test_scrape_shows_the_serving_path(make_gateway: MakeGateway) -> None:
    registry = CollectorRegistry()
    Gauge("swell_cache_bytes", "A collector another part registered", registry=registry).set(7)
    gateway = make_gateway(registry=registry)
    gateway.replicas.items = [ReplicaInfo(id="r1", service="echo", state=ReplicaState.READY)]
    async with gateway.client() as client:
        first = (await client.post("/v1/jobs", json={"service": "echo", "input": {}})).json()["id"]
        await client.post("/v1/jobs", json={"service": "echo", "input": {}})
        await client.post("/v1/jobs", json={"service": "nope", "input": {}})
        for _ in range(3):
            await client.post("/v1/jobs", json={"service": "small", "input": {}})
        await client.post(
            "/v1/jobs", json={"service": "echo", "input": {}, "callback_url": "http://10.0.0.1"}
        )
        finish(gateway.queue, first)
        text = (await client.get("/metrics")).text

    found = samples(text)

    def value(name: str, **labels: str) -> float | None:
        return found.get((name, frozenset(labels.items())))

    assert value("swell_jobs_submitted_total", service="echo") == 2
    assert value("swell_jobs_submitted_total", service="small") == 2
    assert value("swell_jobs_rejected_total", service="small", reason="queue_full") == 1
    assert value("swell_jobs_rejected_total", service="echo", reason="invalid") == 1
    assert value("swell_jobs_rejected_total", service="", reason="unknown_service") == 1
    assert value("swell_queue_depth", service="echo", state="queued") == 1
    assert value("swell_queue_depth", service="echo", state="succeeded") == 1
    assert value("swell_replicas", service="echo", state="ready") == 1
    assert value("swell_jobs_finished_total", service="echo", state="succeeded") == 1
    assert value("swell_job_latency_seconds_count", service="echo") == 1
    assert value("swell_job_run_seconds_count", service="echo") == 1
    assert value("swell_ack_seconds_count") == 7
    assert value("swell_cache_bytes") == 7, "the registry passed in is the one served"


def test_histograms_use_the_jobs_own_timestamps(tmp_path: Path) -> None:
    clock = ManualClock(START)
    queue = open_queue(f"sqlite:///{tmp_path}/q.db", clock=clock)
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, queue)
    job, _ = queue.submit(JobSpec(service="echo", input={}))
    clock.advance(2)
    queue.lease("echo", "w", max_jobs=1)
    clock.advance(3)
    queue.complete(job.id, "w", {})

    assert metrics.collect_finished() == 1
    assert metrics.collect_finished() == 0, "each finished job is observed once"
    sample = registry.get_sample_value
    assert sample("swell_job_queue_wait_seconds_sum", {"service": "echo"}) == 2
    assert sample("swell_job_run_seconds_sum", {"service": "echo"}) == 3
    assert sample("swell_job_latency_seconds_sum", {"service": "echo"}) == 5
    queue.close()


def test_a_job_committed_after_a_later_one_is_still_seen(tmp_path: Path) -> None:
    """Workers stamp `finished_at` before they commit, so commits arrive slightly out of order."""
    slow_clock, fast_clock = ManualClock(START), ManualClock(START + 0.5)
    slow = open_queue(f"sqlite:///{tmp_path}/q.db", clock=slow_clock)
    fast = open_queue(f"sqlite:///{tmp_path}/q.db", clock=fast_clock)
    metrics = GatewayMetrics(CollectorRegistry(), fast)
    a, _ = slow.submit(JobSpec(service="echo", input={}))
    b, _ = slow.submit(JobSpec(service="echo", input={}))
    leased = {j.id for j in slow.lease("echo", "w", max_jobs=2)}
    assert leased == {a.id, b.id}
    fast.complete(b.id, "w", {})
    assert metrics.collect_finished() == 1
    slow.complete(a.id, "w", {})  # finished_at half a second before b's
    assert metrics.collect_finished() == 1
    assert metrics.collect_finished() == 0
    slow.close()
    fast.close()


def test_history_from_before_the_gateway_started_is_not_counted(tmp_path: Path) -> None:
    queue = open_queue(f"sqlite:///{tmp_path}/q.db")
    old, _ = queue.submit(JobSpec(service="echo", input={}))
    queue.cancel(old.id)
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, queue)
    new, _ = queue.submit(JobSpec(service="echo", input={}))
    queue.cancel(new.id)
    assert metrics.collect_finished() == 1
    assert (
        registry.get_sample_value("swell_jobs_finished_total", {"service": "echo", "state": "cancelled"}) == 1
    )
    queue.close()


def test_a_gateway_started_while_storage_fails_finds_the_cursor_later(tmp_path: Path) -> None:
    queue = open_queue(f"sqlite:///{tmp_path}/q.db")
    failing = _Failing(queue)
    metrics = GatewayMetrics(CollectorRegistry(), failing)  # type: ignore[arg-type]
    failing.broken = False
    assert metrics.collect_finished() == 0, "the first read finds where the log ends"
    job, _ = queue.submit(JobSpec(service="echo", input={}))
    queue.cancel(job.id)
    assert metrics.collect_finished() == 1
    queue.close()


class _Failing:
    """A queue whose event cursor is out of reach while `broken`."""

    def __init__(self, queue: QueueBackend) -> None:
        self.queue, self.broken = queue, True

    def event_cursor(self) -> int:
        if self.broken:
            raise Unavailable("the disk is gone", retry_after=1)
        return self.queue.event_cursor()

    def __getattr__(self, name: str) -> object:
        return getattr(self.queue, name)
