"""Prometheus metrics of the serving path, on a registry other parts can add their collectors to.

Workers are separate processes, so the gateway learns about finished jobs from the queue's event
log: `collect_finished()` follows `queue.events_since(cursor)` (state events only; a final one
carries the job's times, so no job is read) and feeds the wait, run and latency histograms. The
cursor is a sequence number, so a job is counted once however its commit raced its neighbours';
it starts at the newest event, so a restarted gateway does not count history. Depth and replica
gauges are read at scrape time by custom collectors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from swell.core.errors import SwellError
from swell.core.jobs import JobEvent, JobState
from swell.core.replicas import ReplicaView
from swell.queue.base import QueueBackend

FINAL = frozenset(state.value for state in JobState if state.final)
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


class ModelLoadCollector(Collector):
    """`swell_model_loads_total{service,model}` and `swell_model_load_seconds{service,model}` (a
    summary: `_count` loads, `_sum` seconds), summed over the replicas at each scrape from the
    `loads:MODEL` and `load:MODEL` entries of their phases (swell.worker.models). A replica that
    restarts starts from zero, which Prometheus' `rate()` reads as a counter reset."""

    def __init__(self, replicas: ReplicaView) -> None:
        self.replicas = replicas

    def collect(self) -> Iterator[Metric]:
        loads: dict[tuple[str, str], float] = {}
        seconds: dict[tuple[str, str], float] = {}
        for replica in self.replicas.replicas():
            for name, value in replica.phases.items():
                kind, sep, model = name.partition(":")
                if sep and kind in ("load", "loads"):
                    into = loads if kind == "loads" else seconds
                    into[(replica.service, model)] = into.get((replica.service, model), 0.0) + value
        total = CounterMetricFamily(
            "swell_model_loads",
            "Checkpoint loads by the replicas (start and switches)",
            labels=["service", "model"],
        )
        timed = SummaryMetricFamily(
            "swell_model_load_seconds",
            "Seconds the replicas spent loading checkpoints",
            labels=["service", "model"],
        )
        for key in sorted(loads):
            total.add_metric(list(key), loads[key])
            timed.add_metric(list(key), count_value=int(loads[key]), sum_value=seconds.get(key, 0.0))
        yield total
        yield timed


class GatewayMetrics:
    """Every metric the gateway keeps; `registry` is shared with the rest of `swell up`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        queue: QueueBackend,
        *,
        replicas: ReplicaView | None = None,
    ) -> None:
        self.registry = registry
        self.queue = queue
        self._cursor = _newest(queue)  # the seq of the last event read; None: find it at the first read
        self.arrivals = Counter(
            "swell_jobs_submitted", "Submits accepted (new jobs)", ["service"], registry=registry
        )
        self.rejections = Counter(
            "swell_jobs_rejected", "Submits refused, by reason", ["service", "reason"], registry=registry
        )
        self.refused = Counter(
            "swell_requests_refused",
            "Requests the request filter refused, by door (jobs, openai, a1111, discord)",
            ["service", "door"],
            registry=registry,
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
            registry.register(ModelLoadCollector(replicas))

    def collect_finished(self, batch: int = 1000) -> int:
        """Observe jobs that finished since the last call; returns how many. The first call only
        finds where the log ends now."""
        if self._cursor is None:
            self._cursor = self.queue.event_cursor()
            return 0
        new = 0
        while True:
            events = self.queue.events_since(self._cursor, kinds=("state",), limit=batch)
            new += sum(self._observe(event) for event in events)
            if events:
                self._cursor = events[-1].seq
            if len(events) < batch:
                return new

    def _observe(self, event: JobEvent) -> bool:
        data = event.data
        if data.get("state") not in FINAL or data.get("finished_at") is None:
            return False
        service, finished_at, created_at = data["service"], data["finished_at"], data["created_at"]
        started_at = data.get("started_at")
        self.finished.labels(service, data["state"]).inc()
        self.latency.labels(service).observe(max(0.0, finished_at - created_at))
        if started_at is not None:
            self.queue_wait.labels(service).observe(max(0.0, started_at - created_at))
            self.run_time.labels(service).observe(max(0.0, finished_at - started_at))
        return True


def _newest(queue: QueueBackend) -> int | None:
    """Where the event log ends now, or None while the storage cannot say (asked again later)."""
    try:
        return queue.event_cursor()
    except SwellError:
        return None


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
