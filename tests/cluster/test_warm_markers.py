"""Warm markers: a node advertises a dataset warm only while its node cache holds every chunk of it,
and evicting any of those chunks (the quota, `swell data evict`) removes the marker. Real files: a
file:// dataset preloaded into a real node cache; no Ray needed (the marker is what a replica's
actor writes and reads on its node, swell.cluster.ray)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

pytest.importorskip("blake3", reason="the node cache needs swell[data]")

from swell.data.cache import NodeCache
from swell.data.config import DatasetConfig
from swell.data.datasets import evict, preload

ray_cluster = pytest.importorskip("swell.cluster.ray", reason="ray is not installed")
CHUNK = 1024


def dataset(tmp_path: Path, name: str, size: int) -> DatasetConfig:
    """A file:// dataset of one file; its chunks differ from another dataset's (content-addressed)."""
    folder = tmp_path / "origin" / name
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(random.Random(name).randbytes(size))  # every chunk distinct
    return DatasetConfig(source=f"file://{folder}")


def cache_with(tmp_path: Path, quota: int | None = None) -> tuple[NodeCache, DatasetConfig, DatasetConfig]:
    cache = NodeCache(tmp_path / "data" / "cache", chunk_size=CHUNK, quota_bytes=quota)
    return cache, dataset(tmp_path, "m1", 4 * CHUNK), dataset(tmp_path, "m2", 4 * CHUNK)


def test_a_dataset_held_whole_is_marked_and_one_never_cached_is_not(tmp_path: Path) -> None:
    cache, m1, _ = cache_with(tmp_path)
    preload("m1", m1, cache)
    assert ray_cluster.mark_if_cached(cache, "node-a", "m1")
    assert not ray_cluster.mark_if_cached(cache, "node-a", "m2"), "m2 was never in this cache"
    assert cache.warm("node-a") == ["m1"] and cache.warm("node-b") == []


def test_evicting_a_dataset_removes_its_marker(tmp_path: Path) -> None:
    cache, m1, m2 = cache_with(tmp_path)
    preload("m1", m1, cache)
    preload("m2", m2, cache)
    for node in ("node-a", "node-b"):
        assert ray_cluster.mark_if_cached(cache, node, "m1") and ray_cluster.mark_if_cached(cache, node, "m2")
    evict("m1", cache)  # `swell data evict m1`
    assert cache.warm("node-a") == ["m2"] and cache.warm("node-b") == ["m2"]
    assert not ray_cluster.mark_if_cached(cache, "node-a", "m1"), "m1 is no longer whole here"


def test_quota_eviction_removes_the_markers_of_what_it_evicted(tmp_path: Path) -> None:
    cache, m1, m2 = cache_with(tmp_path, quota=6 * CHUNK)
    preload("m1", m1, cache)
    assert ray_cluster.mark_if_cached(cache, "node-a", "m1")
    preload("m2", m2, cache)  # over the quota: m1's least recently used chunks go
    cache.enforce_quota(now=True)
    assert cache.usage() <= 6 * CHUNK and cache.process_statistics().evictions >= 2
    assert cache.warm("node-a") == [], "the marker outlived the chunks it lists"
    assert ray_cluster.mark_if_cached(cache, "node-a", "m2") and cache.warm("node-a") == ["m2"]


def test_a_checkpoint_is_warm_where_its_datasets_are() -> None:
    from swell.cluster import placement
    from swell.core.config import parse_config

    service = {
        "name": "sd",
        "engine": "diffusers",
        "options": {"device": "cpu"},
        "models": {"base": {"dataset": "sd15"}, "plain": {"path": "/tmp/sd-plain"}},
    }
    datasets = {"sd15": {"source": "file:///tmp/sd15"}}
    [spec] = parse_config({"datasets": datasets, "services": [service]}).services
    warm, cold = placement.Node("a", {}, frozenset({"sd15"})), placement.Node("b", {}, frozenset({"other"}))
    assert ray_cluster._as_models(warm, spec, "base").warm == {"base"}
    assert ray_cluster._as_models(cold, spec, "base").warm == frozenset()
    assert ray_cluster._as_models(warm, spec, "plain").warm == frozenset(), "it needs no dataset"
