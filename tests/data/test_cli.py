"""`swell data preload/ls/evict` through typer's runner, on a real file:// dataset and a metrics scrape."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from typer.testing import CliRunner

from swell.data.cache import NodeCache
from swell.data.cli import app
from swell.data.config import DatasetConfig
from swell.data.datasets import preload
from swell.data.metrics import register_metrics


def test_preload_ls_evict(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "model.safetensors").write_bytes(os.urandom(300_000))
    config = tmp_path / "swell.yaml"
    config.write_text(f"datasets:\n  tiny:\n    source: file://{origin}\n    include: ['*.safetensors']\n")
    runner = CliRunner(env={"COLUMNS": "200"})
    opts = ["--data-dir", str(tmp_path / "data")]

    result = runner.invoke(app, ["preload", "tiny", "--config", str(config), *opts])
    assert result.exit_code == 0, result.output
    assert "300000 bytes from the origin" in result.output

    result = runner.invoke(app, ["ls", *opts])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "tiny" in line)
    assert row.count("300000") == 2  # bytes and cached bytes
    assert "bytes from origin 300000" in result.output and "quota none" in result.output

    result = runner.invoke(app, ["evict", "tiny", *opts])
    assert result.exit_code == 0 and "300000 bytes freed" in result.output

    result = runner.invoke(app, ["evict", "nope", *opts])
    assert result.exit_code == 1 and "not in the cache" in result.output

    result = runner.invoke(app, ["preload", "nope", "--config", str(config), *opts])
    assert result.exit_code == 1 and "no dataset named 'nope'" in result.output


def test_metrics_export_the_statistics(tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "w.bin").write_bytes(b"x" * 5000)
    cache = NodeCache(tmp_path / "c", quota_bytes=10**6, chunk_size=4096)
    registry = CollectorRegistry()
    register_metrics(registry, cache)
    preload("w", DatasetConfig(source=f"file://{tmp_path / 'o'}"), cache)
    text = generate_latest(registry).decode()
    assert "swell_cache_bytes_from_origin_total 5000.0" in text
    assert "swell_cache_misses_total 2.0" in text
    assert "swell_cache_quota_bytes 1e+06" in text


def test_metrics_export_the_replicas_phases(tmp_path: Path) -> None:
    from swell.core.replicas import ReplicaInfo, ReplicaState

    class Replicas:
        def replicas(self) -> list[ReplicaInfo]:
            phases = {"fetch": 1.5, "load": 0.25, "warmup": 0.125}
            return [
                ReplicaInfo("r1", "emb", ReplicaState.READY, phases=phases),
                ReplicaInfo("r2", "emb", ReplicaState.LOADING),
            ]

    registry = CollectorRegistry()
    register_metrics(registry, NodeCache(tmp_path), replicas=Replicas())
    text = generate_latest(registry).decode()
    assert 'swell_replica_phase_seconds{phase="fetch",replica="r1",service="emb"} 1.5' in text
    assert 'swell_replica_phase_seconds{phase="warmup",replica="r1",service="emb"} 0.125' in text
    assert 'replica="r2"' not in text
    assert "swell_cache_usage_bytes 0.0" in text


def test_swell_data_is_a_subcommand_of_swell() -> None:
    from swell.cli import app as swell

    result = CliRunner().invoke(swell, ["data", "--help"])
    assert result.exit_code == 0 and all(cmd in result.output for cmd in ("preload", "ls", "evict"))
