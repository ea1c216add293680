"""Prometheus metrics of the serving path, on a registry other parts can add their collectors to.

Workers are separate processes, so the gateway learns about finished jobs from the queue:
`collect_finished()` reads `queue.finished_times_since(...)` (the times alone: no input or result is
decoded) and feeds the wait, run and latency histograms. Depth and replica gauges are read at scrape
time by custom collectors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from swell.core.clock import Clock, SystemClock
from swell.core.replicas import ReplicaView
from swell.queue.base import JobTimes, QueueBackend

ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
JOB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class QueueDepthCollector(Collector):
    """`swell_queue_depth{service,state}`, read from the queue at each scrape."""

    def __init__(self, queue: QueueBackend) -> None:
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "swell_queue_depth", "Jobs by service and state", labels=["service", "state"]
        )
        for service, states in sorted(self.queue.depth().items()):
            for state, count in sorted(states.items()):
                family.add_metric([service, state], count)
        yield family


class ReplicaCollector(Collector):
    """`swell_replicas{service,state}`, read from the supervisor at each scrape."""

    def __init__(self, replicas: ReplicaView) -> None:
        self.replicas = replicas

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("swell_replicas", "Worker replicas by state", labels=["service", "state"])
        counts: dict[tuple[str, str], int] = {}
        for replica in self.replicas.replicas():
            key = (replica.service, replica.state.value)
            counts[key] = counts.get(key, 0) + 1
        for (service, state), count in sorted(counts.items()):
            family.add_metric([service, state], count)
        yield family


class GatewayMetrics:
    """Every metric the gateway keeps; `registry` is shared with the rest of `swell up`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        queue: QueueBackend,
        *,
        replicas: ReplicaView | None = None,
        clock: Clock = SystemClock(),
        lag: float = 2.0,
    ) -> None:
        self.registry = registry
        self.queue = queue
        self.lag = lag  # finished jobs committed out of timestamp order are still seen within this
        self._cursor = clock.now()
        self._seen: dict[str, float] = {}  # job id -> finished_at, for jobs inside the lag window
        self.arrivals = Counter(
            "swell_jobs_submitted", "Submits accepted (new jobs)", ["service"], registry=registry
        )
        self.rejections = Counter(
            "swell_jobs_rejected", "Submits refused, by reason", ["service", "reason"], registry=registry
        )
        self.finished = Counter(
            "swell_jobs_finished", "Jobs that reached a final state", ["service", "state"], registry=registry
        )
        self.queue_wait = _histogram(
            "swell_job_queue_wait_seconds", "From submit to the start of the last delivery", registry
        )
        self.run_time = _histogram(
            "swell_job_run_seconds", "From the start of the last delivery to its end", registry
        )
        self.latency = _histogram("swell_job_latency_seconds", "From submit to a final state", registry)
        self.ack = Histogram(
            "swell_ack_seconds", "Time to answer POST /v1/jobs", buckets=ACK_BUCKETS, registry=registry
        )
        registry.register(QueueDepthCollector(queue))
        if replicas is not None:
            registry.register(ReplicaCollector(replicas))

    def collect_finished(self, batch: int = 1000) -> int:
        """Observe jobs that finished since the last call; returns how many were new."""
        since = self._cursor - self.lag
        new = 0
        while True:
            jobs = self.queue.finished_times_since(since, limit=batch)
            new += sum(self._observe(job) for job in jobs)
            if len(jobs) < batch or jobs[-1].finished_at == since:
                break
            since = jobs[-1].finished_at
        horizon = self._cursor - self.lag
        self._seen = {job_id: at for job_id, at in self._seen.items() if at >= horizon}
        return new

    def _observe(self, job: JobTimes) -> bool:
        if job.id in self._seen:
            return False
        self._seen[job.id] = job.finished_at
        self._cursor = max(self._cursor, job.finished_at)
        self.finished.labels(job.service, job.state.value).inc()
        self.latency.labels(job.service).observe(max(0.0, job.finished_at - job.created_at))
        if job.started_at is not None:
            self.queue_wait.labels(job.service).observe(max(0.0, job.started_at - job.created_at))
            self.run_time.labels(job.service).observe(max(0.0, job.finished_at - job.started_at))
        return True


def _histogram(name: str, documentation: str, registry: CollectorRegistry) -> Histogram:
    return Histogram(name, documentation, ["service"], buckets=JOB_BUCKETS, registry=registry)


WAITED = "swell.waited"  # set in the scope by a submit that waited for its job: not an acknowledgement


class AckTimer:
    """Pure ASGI middleware: observes how long `POST /v1/jobs` takes to start its response
    (submits that asked to wait for the result are left out)."""

    def __init__(self, app: Any, histogram: Histogram, path: str = "/v1/jobs") -> None:
        self.app = app
        self.histogram = histogram
        self.path = path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.start" and not scope.get(WAITED):
                self.histogram.observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, timed_send)
