"""`LocalSupervisor.warm`: a real supervisor preloads a checkpoint's dataset from a real HTTP origin on
loopback into its node cache in the background; what is cached is not fetched again, not even by a
new supervisor on the same data directory; an origin that fails is logged with the dataset's name and
counted, and the supervisor carries on."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swell.cluster.local import LocalSupervisor
from swell.core.config import SwellConfig, parse_config
from swell.core.errors import ServiceNotFound
from swell.data.cache import open_node_cache
from swell.data.datasets import cached_bytes, resolve
from tests.cluster.test_local import wait_for
from tests.data.servers import range_server

FILES = {"model.safetensors": 3 * (1 << 20) + 17, "config.json": 100}


def make_config(url: str, broken_url: str) -> SwellConfig:
    return parse_config(
        {
            "datasets": {
                "ckpt-a": {"source": url, "include": list(FILES)},
                "ckpt-b": {"source": broken_url, "include": list(FILES)},
            },
            "services": [
                {
                    "name": "img",
                    "engine": "embeddings",
                    "options": {"device": "cpu"},
                    "replicas": {"min": 0, "max": 1},  # no worker: only the warmer touches the cache
                    "models": {"a": {"dataset": "ckpt-a"}, "b": {"dataset": "ckpt-b"}, "c": {}},
                }
            ],
        }
    )


@pytest.fixture
def origins(tmp_path: Path) -> Iterator[tuple[SwellConfig, Any]]:
    """A config whose `ckpt-a` is served by one loopback origin and `ckpt-b` by one holding nothing
    (every request a 404); yields it with the good origin's byte counter."""
    good, empty = tmp_path / "origin", tmp_path / "empty"
    good.mkdir()
    empty.mkdir()
    for name, size in FILES.items():
        (good / name).write_bytes(os.urandom(size))
    with range_server(good) as (url, counter), range_server(empty) as (broken_url, _):
        yield make_config(url, broken_url), counter


def warming(supervisor: LocalSupervisor) -> dict[str, Any]:
    stats: dict[str, Any] = supervisor.statistics().extra["warming"]
    return stats


def cached(config: SwellConfig, data_dir: Path, name: str) -> int:
    manifest = resolve(name, config.datasets[name], open_node_cache(data_dir))
    return cached_bytes(manifest, open_node_cache(data_dir))


def test_warm_preloads_into_the_node_cache_once(origins: tuple[SwellConfig, Any], tmp_path: Path) -> None:
    config, counter = origins
    data_dir = tmp_path / "data"
    supervisor = LocalSupervisor(config, f"sqlite:///{tmp_path / 'q.db'}", data_dir)
    supervisor.start()
    try:
        supervisor.warm("img", ["a", "c"])  # `c` names no dataset: nothing to fetch for it
        wait_for(lambda: warming(supervisor)["fetched"] == 1, timeout=60)
        assert cached(config, data_dir, "ckpt-a") == sum(FILES.values())
        assert counter.bytes >= sum(FILES.values())
        sent = counter.bytes
        supervisor.warm("img", ["a"])  # already warmed by this supervisor: not queued again
        stats = warming(supervisor)
        assert stats["pending"] == [] and stats["datasets"] == ["ckpt-a"] and stats["failed"] == 0
        with pytest.raises(ServiceNotFound):
            supervisor.warm("nope", ["a"])
    finally:
        supervisor.stop(timeout=5)
    again = LocalSupervisor(config, f"sqlite:///{tmp_path / 'q.db'}", data_dir)
    try:
        again.warm("img", ["a"])  # a new supervisor finds it cached: no byte read from the origin
        wait_for(lambda: warming(again)["cached"] == 1, timeout=30)
        assert warming(again)["fetched"] == 0 and counter.bytes == sent
    finally:
        again.stop(timeout=5)


def test_a_failing_origin_is_logged_and_counted(
    origins: tuple[SwellConfig, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, _ = origins
    data_dir = tmp_path / "data"
    supervisor = LocalSupervisor(config, f"sqlite:///{tmp_path / 'q.db'}", data_dir)
    supervisor.start()
    caplog.set_level(logging.WARNING, logger="swell.cluster")
    try:
        supervisor.warm("img", ["b", "a"])  # one at a time: the failure does not stop the next
        wait_for(lambda: warming(supervisor)["pending"] == [], timeout=60)
        stats = warming(supervisor)
        assert (stats["failed"], stats["fetched"], stats["datasets"]) == (1, 1, ["ckpt-a"])
        assert "ckpt-b" in stats["errors"]
        assert any("ckpt-b" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        supervisor.warm("img", ["b"])  # a failed dataset is tried again when named again
        wait_for(lambda: warming(supervisor)["failed"] == 2, timeout=60)
    finally:
        supervisor.stop(timeout=5)
