"""Datasets: resolve a named set of files into a manifest, preload it, hand engines a local directory.

A manifest (path, size, sha256 per file) is kept per dataset revision at
`<cache>/manifests/<name>/<revision>.json`, published atomically. With `revision` set in the config, a
stored manifest for it is used without asking the origin; without it, the revision is a hash of the
listing (paths, sizes, etags), so a changed origin gets a new manifest. The sha256 of a file is filled
in when the file is first fetched whole; `dataset_path` checks it when it writes the local copy.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from swell.core.errors import IntegrityError, NotFound
from swell.data.cache import NodeCache, atomic_write, digest, open_node_cache
from swell.data.config import DatasetConfig
from swell.data.sources import ObjectInfo, Source, checked_info, open_source

Progress = Callable[[int], None]  # called with bytes just fetched


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    sha256: str | None = None
    etag: str | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    source: str
    revision: str
    files: tuple[FileEntry, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "files": [asdict(f) for f in self.files]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        doc = json.loads(text)
        return cls(doc["name"], doc["source"], doc["revision"], tuple(FileEntry(**f) for f in doc["files"]))


@dataclass
class PhaseTimings:
    """Seconds a replica spent per phase; a worker reports these with its load."""

    fetch: float = 0.0
    load: float = 0.0
    warmup: float = 0.0


def select(files: list[ObjectInfo], config: DatasetConfig) -> list[ObjectInfo]:
    """The files matching `include` and none of `exclude` (shell globs on the relative path)."""

    def match(path: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(path, p) for p in patterns)

    return [f for f in files if match(f.path, config.include) and not match(f.path, config.exclude)]


def _listing(source: Source, config: DatasetConfig) -> list[ObjectInfo]:
    if source.can_list:
        return select(source.list(), config)
    globs = [p for p in config.include if not any(ch in p for ch in "*?[")]
    return select([source.info(p) for p in globs], config)


def _manifest_path(cache: NodeCache, name: str, revision: str) -> Path:
    return cache.root / "manifests" / name / f"{revision}.json"


def stored_manifests(cache: NodeCache) -> list[Manifest]:
    return [Manifest.from_json(p.read_text()) for p in sorted((cache.root / "manifests").glob("*/*.json"))]


def resolve(name: str, config: DatasetConfig, cache: NodeCache) -> Manifest:
    """The dataset's manifest: stored for a pinned revision, else built from the source's listing."""
    if config.revision and _manifest_path(cache, name, config.revision).exists():
        return Manifest.from_json(_manifest_path(cache, name, config.revision).read_text())
    files = _listing(open_source(config), config)
    if not files:
        raise NotFound(f"dataset {name!r}: no file at {config.source} matches {config.include}")
    revision = (
        config.revision
        or hashlib.sha256(json.dumps([(f.path, f.size, f.etag) for f in files]).encode()).hexdigest()[:16]
    )
    path = _manifest_path(cache, name, revision)
    if path.exists():
        return Manifest.from_json(path.read_text())
    manifest = Manifest(
        name, config.source, revision, tuple(FileEntry(f.path, f.size, None, f.etag) for f in files)
    )
    atomic_write(path, manifest.to_json().encode())
    return manifest


def preload(name: str, config: DatasetConfig, cache: NodeCache, progress: Progress | None = None) -> Manifest:
    """Fetch every file of the dataset into the cache and record the sha256 of each in the manifest.

    Before a file is fetched, the size (and ETag, where both are known) the origin declares for it must
    be the manifest's (`IntegrityError` otherwise): buffers are sized by the manifest, and an origin
    that changed under a pinned revision is told at once rather than after the whole download.
    """
    manifest = resolve(name, config, cache)
    source = open_source(config)
    entries = []
    for f in manifest.files:
        sha = hashlib.sha256()
        if cache.cached_bytes(source.uri, _info(f)) < f.size:  # the origin will be read: is it as listed?
            checked_info(source, f.path, _info(f))
        with cache.reader(source, f.path, _info(f)) as reader:
            for idx in range(cache.chunk_count(f.size)):
                buf = bytearray(min(cache.chunk_size, f.size - idx * cache.chunk_size))
                reader.readinto(memoryview(buf), idx * cache.chunk_size)
                sha.update(buf)
                if progress:
                    progress(len(buf))
        if f.sha256 and f.sha256 != sha.hexdigest():
            raise IntegrityError(f"dataset {name!r}: {f.path} does not match its manifest's sha256")
        entries.append(FileEntry(f.path, f.size, sha.hexdigest(), f.etag))
    done = Manifest(name, manifest.source, manifest.revision, tuple(entries))
    if done != manifest:
        atomic_write(_manifest_path(cache, name, manifest.revision), done.to_json().encode())
    return done


def dataset_path(
    name: str,
    datasets: dict[str, DatasetConfig],
    data_dir: Path,
    *,
    timings: PhaseTimings | None = None,
    cache: NodeCache | None = None,
) -> Path:
    """A local directory holding the dataset's files, fetched through the node cache once per node.

    `file://` datasets are returned in place. Others are written to `<data_dir>/cache/trees/<name>/<rev>`
    from verified chunks (each file checked against the manifest's sha256), atomically per directory.
    """
    start = time.perf_counter()
    if name not in datasets:
        raise NotFound(f"no dataset named {name!r} (known: {', '.join(sorted(datasets)) or 'none'})")
    config = datasets[name]
    if config.source.startswith("file://"):
        root = Path(config.source.removeprefix("file://"))
        if not root.is_dir():
            raise NotFound(f"dataset {name!r}: no such directory {root}")
        if timings is not None:
            timings.fetch = time.perf_counter() - start
        return root
    cache = cache or open_node_cache(data_dir)
    manifest = resolve(name, config, cache)
    tree = cache.root / "trees" / name / manifest.revision
    if not (tree.exists() and all(f.sha256 for f in manifest.files)):  # else: verified when published
        manifest = preload(name, config, cache)
        if not tree.exists():
            _write_tree(manifest, config, cache, tree)
    if timings is not None:
        timings.fetch = time.perf_counter() - start
    return tree


def _write_tree(manifest: Manifest, config: DatasetConfig, cache: NodeCache, tree: Path) -> None:
    source = open_source(config)
    staging = tree.with_name(f".{tree.name}.{digest(str(time.time_ns()).encode())[:8]}")
    for f in manifest.files:
        target = staging / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        sha = hashlib.sha256()
        with open(target, "wb") as out, cache.reader(source, f.path, _info(f)) as r:
            for idx in range(cache.chunk_count(f.size)):
                buf = bytearray(min(cache.chunk_size, f.size - idx * cache.chunk_size))
                r.readinto(memoryview(buf), idx * cache.chunk_size)
                sha.update(buf)
                out.write(buf)
        if f.sha256 is not None and sha.hexdigest() != f.sha256:
            shutil.rmtree(staging, ignore_errors=True)
            raise IntegrityError(f"dataset {manifest.name!r}: {f.path} does not match its manifest's sha256")
    try:
        staging.rename(tree)
    except OSError:  # another process published it first
        shutil.rmtree(staging, ignore_errors=True)


def cached_bytes(manifest: Manifest, cache: NodeCache) -> int:
    """How many of the manifest's bytes the cache holds now."""
    return sum(cache.cached_bytes(manifest.source, _info(f)) for f in manifest.files)


def evict(name: str, cache: NodeCache) -> int:
    """Drop a dataset's cached chunks (those not in use) and local trees; returns the bytes freed."""
    manifests = [m for m in stored_manifests(cache) if m.name == name]
    if not manifests:
        raise NotFound(f"dataset {name!r} is not in the cache")
    freed = 0
    for m in manifests:
        freed += sum(cache.forget(m.source, _info(f)) for f in m.files)
    shutil.rmtree(cache.root / "trees" / name, ignore_errors=True)
    return freed


def _info(f: FileEntry) -> ObjectInfo:
    return ObjectInfo(f.path, f.size, f.etag)
