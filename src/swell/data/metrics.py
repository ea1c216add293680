"""Export the node cache's `statistics()` and the replicas' load phases to Prometheus (/metrics).

The cache's counters are the node's (every process that used the cache directory: workers, `swell data
preload`), so the gateway process exports what its workers fetched and served. `swell up` registers
both on its registry:

    register_metrics(registry, open_node_cache(settings.data_dir), replicas=supervisor)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from swell.core.replicas import ReplicaView
    from swell.data.cache import NodeCache


class CacheCollector:
    """`swell_cache_*_total` and `swell_cache_{quota,usage}_bytes`, read from the cache at scrape time."""

    def __init__(self, cache: NodeCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for key, value in asdict(self.cache.statistics()).items():
            yield CounterMetricFamily(
                f"swell_cache_{key}", f"Node cache {key.replace('_', ' ')}", value=value
            )
        yield GaugeMetricFamily(
            "swell_cache_quota_bytes", "Node cache quota (0: none)", value=self.cache.quota_bytes or 0
        )
        yield GaugeMetricFamily(
            "swell_cache_usage_bytes", "Bytes in the node cache's chunks", value=self.cache.usage()
        )


class PhaseCollector:
    """`swell_replica_phase_seconds{service,replica,phase}`: seconds each replica spent per load phase
    (fetch, load, warmup), as its worker reported them."""

    def __init__(self, replicas: ReplicaView) -> None:
        self.replicas = replicas

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "swell_replica_phase_seconds",
            "Seconds a replica spent per load phase (fetch, load, warmup)",
            labels=["service", "replica", "phase"],
        )
        for replica in self.replicas.replicas():
            for phase, seconds in sorted(replica.phases.items()):
                if _is_count(phase):
                    continue
                family.add_metric([replica.service, replica.id, phase], float(seconds))
        yield family


def _is_count(phase: str) -> bool:
    """Whether a `phases` entry counts loads instead of timing them (swell.worker.models writes
    `loads:MODEL` and `switches` beside the seconds; /metrics shows them as swell_model_loads_total)."""
    return phase.startswith("loads:") or phase == "switches"


def register_metrics(
    registry: CollectorRegistry, cache: NodeCache, *, replicas: ReplicaView | None = None
) -> CacheCollector:
    """Add the cache's counters (and, given `replicas`, their load phases) to `registry`."""
    collector = CacheCollector(cache)
    registry.register(collector)
    if replicas is not None:
        registry.register(PhaseCollector(replicas))
    return collector
