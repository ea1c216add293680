"""The node cache with real processes: one origin read for many fillers, no torn chunk, integrity, quota."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from swell.data.cache import NodeCache
from swell.data.config import DatasetConfig
from swell.data.datasets import dataset_path, evict, preload, resolve
from swell.data.sources import MemorySource, ObjectInfo, open_source
from tests.data.servers import range_server

CHUNK = 64 * 1024
SPAWN = mp.get_context("spawn")


def _origin(root: Path) -> dict[str, bytes]:
    files = {"model.safetensors": os.urandom(20 * CHUNK + 123), "config.json": b'{"dim": 8}'}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def _preload_in_process(url: str, cache_dir: str, start: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    config = DatasetConfig(source=url, include=["model.safetensors", "config.json"])
    preload("m", config, NodeCache(cache_dir, chunk_size=CHUNK))


def test_four_processes_read_the_origin_once(tmp_path: Path) -> None:
    (tmp_path / "origin").mkdir()
    files = _origin(tmp_path / "origin")
    with range_server(tmp_path / "origin", rate=8e6) as (url, counter):
        start = SPAWN.Barrier(4)
        procs = [
            SPAWN.Process(target=_preload_in_process, args=(url, str(tmp_path / "cache"), start))
            for _ in range(4)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 4
        assert counter.bytes == sum(len(d) for d in files.values())
        cache = NodeCache(tmp_path / "cache", chunk_size=CHUNK)
        tree = dataset_path("m", {"m": DatasetConfig(source=url, include=list(files))}, tmp_path, cache=cache)
        assert {p.name: p.read_bytes() for p in tree.iterdir()} == files
        assert counter.bytes == sum(len(d) for d in files.values())  # the local copy came from the cache
        served = cache.statistics().bytes_served
        assert dataset_path("m", {"m": DatasetConfig(source=url, include=list(files))}, tmp_path) == tree
        assert cache.statistics().bytes_served == served  # a published tree is not read again


def _churn(cache_dir: str, rounds: int) -> None:
    source = MemorySource("memory://churn", {"f": _pattern()})
    cache = NodeCache(cache_dir, chunk_size=CHUNK)
    info = source.info("f")
    for _ in range(rounds):
        with cache.reader(source, "f") as reader:
            reader.preload()
        cache.forget(source.uri, info)


def _pattern() -> bytes:
    return b"".join(bytes([i % 251]) * CHUNK for i in range(8))


def test_no_torn_chunk_is_ever_visible(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    NodeCache(cache_dir, chunk_size=CHUNK)
    stop, bad, seen = threading.Event(), [], [0]

    def watch() -> None:
        while not stop.is_set():
            for path in (cache_dir / "chunks").glob("*/*"):
                if path.name.startswith("."):
                    continue  # a temporary file being written, not a published chunk
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                seen[0] += 1
                if blake3.blake3(data).hexdigest() != path.name:
                    bad.append(path.name)

    watcher = threading.Thread(target=watch)
    watcher.start()
    procs = [SPAWN.Process(target=_churn, args=(str(cache_dir), 15)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    stop.set()
    watcher.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert seen[0] > 0 and bad == []


def _cached(root: Path, chunks: int) -> tuple[bytes, MemorySource, NodeCache]:
    """A file of `chunks` random chunks in a memory source, preloaded into a cache at `root`."""
    data = os.urandom(chunks * CHUNK)
    source = MemorySource("memory://c", {"f": data})
    cache = NodeCache(root, chunk_size=CHUNK)
    with cache.reader(source, "f") as reader:
        reader.preload()
    return data, source, cache


def _read_back(cache: NodeCache, source: MemorySource, size: int) -> bytes:
    out = bytearray(size)
    with cache.reader(source, "f") as reader:
        reader.readinto(memoryview(out), 0)
    return bytes(out)


def test_corrupted_and_truncated_chunks_are_fetched_again(tmp_path: Path) -> None:
    data, source, cache = _cached(tmp_path, 4)
    chunks = sorted((tmp_path / "chunks").glob("*/*"))
    with open(chunks[0], "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 8)
    with open(chunks[1], "r+b") as f:
        f.truncate(CHUNK // 2)
    before = cache.statistics()
    assert _read_back(cache, source, len(data)) == data
    after = cache.statistics()
    assert after.corrupt_chunks - before.corrupt_chunks == 2
    assert after.bytes_from_origin - before.bytes_from_origin == 2 * CHUNK
    assert cache.cached_bytes(source.uri, ObjectInfo("f", len(data))) == len(data)


def test_what_a_crash_leaves_unsynced_is_fetched_again(tmp_path: Path) -> None:
    """Chunks and refs are not fsync'ed: after a crash either may hold zeros (or nothing) at full length."""
    data, source, cache = _cached(tmp_path, 3)
    refs = [next((tmp_path / "refs").iterdir()) / str(i) for i in range(3)]
    h = refs[0].read_text()
    (tmp_path / "chunks" / h[:2] / h).write_bytes(bytes(CHUNK))  # chunk 0: its zeros
    refs[1].write_bytes(bytes(64))  # the ref of chunk 1: zeros
    refs[2].write_bytes(b"")  # the ref of chunk 2: nothing
    assert _read_back(cache, source, len(data)) == data
    stats = cache.statistics()
    assert (stats.corrupt_chunks, stats.bytes_from_origin) == (1, 6 * CHUNK)
    assert [r.read_text() for r in refs] == [
        blake3.blake3(data[i * CHUNK : (i + 1) * CHUNK]).hexdigest() for i in range(3)
    ]


def test_quota_evicts_least_recently_used_but_never_leased(tmp_path: Path) -> None:
    sizes = {"a": 2 * CHUNK, "b": 2 * CHUNK, "c": CHUNK}
    source = MemorySource("memory://q", {name: os.urandom(size) for name, size in sizes.items()})
    cache = NodeCache(tmp_path, quota_bytes=3 * CHUNK, chunk_size=CHUNK)
    held = cache.reader(source, "a")
    held.preload()  # a's chunks stay leased while `held` is open
    with cache.reader(source, "b") as reader:
        reader.preload()
    assert cache.usage() <= 3 * CHUNK
    assert cache.cached_bytes(source.uri, source.info("a")) == 2 * CHUNK
    assert cache.statistics().evictions == 1
    held.close()
    with cache.reader(source, "c") as reader:
        reader.preload()
    assert cache.usage() <= 3 * CHUNK
    assert cache.cached_bytes(source.uri, source.info("c")) == CHUNK
    assert cache.cached_bytes(source.uri, source.info("a")) < 2 * CHUNK  # a was least recently used


def test_filling_walks_the_cache_only_when_the_quota_may_be_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = MemorySource("memory://w", {"big": os.urandom(20 * CHUNK), "more": os.urandom(4 * CHUNK)})
    cache = NodeCache(tmp_path, quota_bytes=22 * CHUNK, chunk_size=CHUNK)
    walks = 0
    chunk_stats = cache._chunk_stats

    def counted() -> Iterator[tuple[int, int, Path]]:
        nonlocal walks
        walks += 1
        return chunk_stats()

    monkeypatch.setattr(cache, "_chunk_stats", counted)
    monkeypatch.setattr("swell.data.cache.QUOTA_RECHECK_S", 3600.0)  # no walk for the count's age
    held = cache.reader(source, "big")
    held.preload()  # held open: its chunks stay leased
    assert walks == 1  # the first fill counted the cache; the other 19 knew they fitted
    with cache.reader(source, "more") as reader:
        reader.preload()  # the third chunk crosses the quota: one walk; the fourth knows it is over
    assert walks == 3  # and one at close
    assert cache.usage() == 22 * CHUNK  # "big" is leased, so two of "more"'s chunks went
    held.close()


def test_manifest_pins_revision_and_evict_frees(tmp_path: Path) -> None:
    (tmp_path / "origin").mkdir()
    files = _origin(tmp_path / "origin")
    config = DatasetConfig(source=f"file://{tmp_path / 'origin'}", exclude=["*.json"], revision="v1")
    cache = NodeCache(tmp_path / "cache", chunk_size=CHUNK)
    manifest = preload("m", config, cache)
    model = files["model.safetensors"]
    assert [(f.path, f.size) for f in manifest.files] == [("model.safetensors", len(model))]
    assert manifest.files[0].sha256 is not None and manifest.revision == "v1"
    (tmp_path / "origin" / "model.safetensors").unlink()
    assert resolve("m", config, cache) == manifest  # a pinned revision needs no origin
    assert evict("m", cache) == len(model)
    assert cache.usage() == 0


def test_sources_are_opened_by_scheme(tmp_path: Path) -> None:
    assert open_source(DatasetConfig(source=f"file://{tmp_path}")).can_list
    with pytest.raises(Exception, match="no such directory"):
        open_source(DatasetConfig(source=f"file://{tmp_path}/missing"))


def _read_once(cache_dir: str) -> None:
    data = random.Random(7).randbytes(3 * CHUNK)  # made here: a large argument would block spawn's pipe
    with NodeCache(cache_dir, chunk_size=CHUNK).reader(MemorySource("memory://n", {"f": data}), "f") as r:
        r.preload()


def test_statistics_are_the_nodes(tmp_path: Path) -> None:
    proc = SPAWN.Process(target=_read_once, args=(str(tmp_path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    cache = NodeCache(tmp_path, chunk_size=CHUNK)  # this process has not read a byte
    assert cache.process_statistics().bytes_from_origin == 0
    assert cache.statistics().bytes_from_origin == 3 * CHUNK and cache.statistics().misses == 3
    _read_once(str(tmp_path))
    after = cache.statistics()  # another NodeCache object of this process added to the same counters
    assert (after.misses, after.hits, after.bytes_served) == (3, 3, 6 * CHUNK)


def test_evicting_a_file_in_use_keeps_what_is_leased(tmp_path: Path) -> None:
    source = MemorySource("memory://e", {"f": os.urandom(2 * CHUNK)})
    cache = NodeCache(tmp_path, chunk_size=CHUNK)
    info = source.info("f")
    with cache.reader(source, "f") as reader:
        reader.preload()
        assert cache.forget(source.uri, info) == 0  # every chunk is leased
        assert cache.cached_bytes(source.uri, info) == 2 * CHUNK  # and still known to the cache
    assert cache.forget(source.uri, info) == 2 * CHUNK
    assert cache.cached_bytes(source.uri, info) == 0 and cache.usage() == 0


def test_a_stale_corrupt_read_never_removes_a_good_chunk(tmp_path: Path) -> None:
    data = os.urandom(CHUNK)
    source = MemorySource("memory://s", {"f": data})
    cache = NodeCache(tmp_path, chunk_size=CHUNK)
    with cache.reader(source, "f") as reader:
        reader.preload()
    (path,) = (tmp_path / "chunks").glob("*/*")
    stale = os.open(path, os.O_RDONLY)
    try:
        (path.parent / ".good").write_bytes(data)
        os.replace(path.parent / ".good", path)  # someone republished the chunk meanwhile
        cache._discard(path.name, stale, {})
    except BaseException:
        os.close(stale)
        raise
    assert path.read_bytes() == data


def test_quota_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from swell.core.errors import ConfigError
    from swell.data.cache import open_node_cache, parse_bytes

    assert [parse_bytes(t) for t in ("1000", "50G", "512MiB", "1.5k", "2e3", "7 GB")] == [
        1000,
        50 * 10**9,
        512 * 2**20,
        1500,
        2000,
        7 * 10**9,
    ]
    monkeypatch.delenv("SWELL_CACHE_QUOTA", raising=False)
    assert open_node_cache(tmp_path).quota_bytes is None
    monkeypatch.setenv("SWELL_CACHE_QUOTA", "2MiB")
    cache = open_node_cache(tmp_path)
    assert (cache.root, cache.quota_bytes) == (tmp_path / "cache", 2 * 2**20)
    assert open_node_cache(tmp_path, quota_bytes=5).quota_bytes == 5
    monkeypatch.setenv("SWELL_CACHE_QUOTA", "lots")
    with pytest.raises(ConfigError, match="SWELL_CACHE_QUOTA"):
        open_node_cache(tmp_path)


def test_file_datasets_are_used_in_place_and_timed(tmp_path: Path) -> None:
    from swell.core.errors import NotFound
    from swell.data.datasets import PhaseTimings

    phases = PhaseTimings(fetch=-1.0)
    datasets = {"m": DatasetConfig(source=f"file://{tmp_path}"), "gone": DatasetConfig(source="file:///nope")}
    assert dataset_path("m", datasets, tmp_path, timings=phases) == tmp_path
    assert phases.fetch >= 0.0
    with pytest.raises(NotFound, match="no such directory"):
        dataset_path("gone", datasets, tmp_path)
    with pytest.raises(NotFound, match="no dataset named 'x'"):
        dataset_path("x", datasets, tmp_path)
