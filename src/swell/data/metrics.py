"""Export a node cache's `statistics()` to Prometheus (the gateway adds it to /metrics)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from swell.data.cache import NodeCache


class CacheCollector:
    """Reads the cache's counters at scrape time."""

    def __init__(self, cache: NodeCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for key, value in asdict(self.cache.statistics()).items():
            yield CounterMetricFamily(
                f"swell_cache_{key}", f"Node cache {key.replace('_', ' ')}", value=value
            )
        yield GaugeMetricFamily(
            "swell_cache_quota_bytes", "Node cache quota", value=self.cache.quota_bytes or 0
        )


def register_metrics(registry: CollectorRegistry, cache: NodeCache) -> CacheCollector:
    collector = CacheCollector(cache)
    registry.register(collector)
    return collector
