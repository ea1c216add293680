"""The node cache: chunked, content-addressed files on local disk, shared by every process of a node.

Layout under `root` (every file is published by write-temp + os.replace, so no running process ever
sees a torn file; chunks and refs are not fsync'ed, because what a crash tore fails its hash check):

    chunks/<h[:2]>/<h>      the bytes of one chunk, named by their blake3 hash h
    refs/<file>/<index>     the hash of chunk <index> of a source file (<file>: hash of uri, path, size, etag)
    locks/<file>.<index>    flock'ed while a process fills that chunk: the origin is read once
    evict.lock              flock'ed by the one process enforcing the quota
    stats                   the node's counters (every process adds to them under a flock)
    warm/<node>/<dataset>   a warm marker: that node holds the dataset warm (swell.cluster.ray reads
                            it); it lists the hashes of the chunks the dataset needs, one a line

A reader holds a shared flock on each chunk file it has read until it is closed (its lease); eviction
takes an exclusive non-blocking flock and skips chunks in use. Every chunk is hashed when read: a
corrupted or truncated chunk is discarded and fetched again. Least recently used chunks (by mtime,
touched on each hit) go first when the byte quota is exceeded. Evicting a chunk (the quota, `forget`,
a corrupt chunk discarded) removes every warm marker that lists it, so a node never advertises a
dataset its cache no longer holds whole; a marker is written (`mark_warm`) only while every chunk it
lists is here. A marker written in the instant a chunk it lists is evicted may outlive it: the
preference is then wrong and harmless (the replica loads cold).

`statistics()` are the node's counters, summed over every process that used this cache directory (so
the gateway can export what its workers did); `process_statistics()` are this process's alone.
`open_node_cache(data_dir)` is the cache of a data directory, its quota from SWELL_CACHE_QUOTA.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import blake3

from swell.core.errors import ConfigError, IntegrityError
from swell.data.sources import ObjectInfo, Source

DEFAULT_CHUNK = 32 * 1024 * 1024
QUOTA_ENV = "SWELL_CACHE_QUOTA"
QUOTA_RECHECK_S = 1.0  # how old this process's count of the cache's usage may get (enforce_quota)


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_from_origin: int = 0
    bytes_served: int = 0
    evictions: int = 0
    corrupt_chunks: int = 0


_FIELDS = tuple(f.name for f in fields(CacheStats))
_STATS = struct.Struct(f"<{len(_FIELDS)}Q")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30}
_UNITS["ti"] = 2**40
_HASH = re.compile(r"[0-9a-f]{64}")


def parse_bytes(text: str) -> int:
    """`"50G"`, `"512MiB"`, `"1e9"`, `"1000000"` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([kmgt]i?)?b?\s*", text.lower())
    if not match:
        raise ValueError(f"not a byte size: {text!r} (e.g. 50G, 512MiB, 1000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def open_node_cache(data_dir: str | Path, *, quota_bytes: int | None = None) -> NodeCache:
    """The node cache of a data directory (`<data_dir>/cache`), its quota from SWELL_CACHE_QUOTA if unset."""
    if quota_bytes is None and os.environ.get(QUOTA_ENV):
        try:
            quota_bytes = parse_bytes(os.environ[QUOTA_ENV])
        except ValueError as exc:
            raise ConfigError(str(exc), key=QUOTA_ENV) from None
    return NodeCache(Path(data_dir) / "cache", quota_bytes=quota_bytes)


def digest(data: bytes | memoryview) -> str:
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()


def atomic_write(path: Path, data: bytes | memoryview, *, durable: bool = True) -> None:
    """Publish `data` at `path` whole or not at all: no reader ever sees a part of it.

    `durable=False` skips the fsync, for files whose readers check them against a hash: after a crash
    such a file may hold zeros, never a part another process could take for whole.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path)


class NodeCache:
    """A byte-quota'd chunk cache in `root`, safe to share between processes and threads."""

    def __init__(self, root: str | Path, *, quota_bytes: int | None = None, chunk_size: int = DEFAULT_CHUNK):
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.root, self.quota_bytes, self.chunk_size = Path(root), quota_bytes, chunk_size
        for sub in ("chunks", "refs", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._stats = CacheStats()
        self._walked: tuple[float, int] | None = None  # (monotonic time, bytes) of the last quota walk
        self._filled = 0  # bytes this process published since

    # -- public ------------------------------------------------------------------------------------

    def statistics(self) -> CacheStats:
        """The node's counters: every process that used this cache directory, this one included."""
        fd = os.open(self.root / "stats", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return CacheStats(*_unpack(os.pread(fd, _STATS.size, 0)))
        finally:
            os.close(fd)

    def process_statistics(self) -> CacheStats:
        """This process's counters alone."""
        with self._lock:
            return self._stats

    def file_id(self, uri: str, info: ObjectInfo) -> str:
        """The cache's name for one version of one source file."""
        return digest(f"{uri}\0{info.path}\0{info.size}\0{info.etag}\0{self.chunk_size}".encode())[:32]

    def reader(self, source: Source, path: str, info: ObjectInfo | None = None) -> CachedReader:
        """A `RangeReader` over one source file that fills the cache as it reads (and leases what it read)."""
        return CachedReader(self, source, info or source.info(path))

    def chunk_count(self, size: int) -> int:
        return -(-size // self.chunk_size)

    def cached_bytes(self, uri: str, info: ObjectInfo) -> int:
        fid = self.file_id(uri, info)
        total = 0
        for idx in range(self.chunk_count(info.size)):
            h = self._ref(fid, idx)
            if h and self._chunk_path(h).exists():
                total += self._chunk_len(info.size, idx)
        return total

    def usage(self) -> int:
        return sum(size for _, size, _ in self._chunk_stats())

    def forget(self, uri: str, info: ObjectInfo) -> int:
        """Drop one file's chunks that no reader holds; returns the bytes freed.

        A chunk under a lease stays, and so does its ref: the file is still (partly) cached.
        """
        fid, freed, gone = self.file_id(uri, info), 0, set()
        for idx in range(self.chunk_count(info.size)):
            h = self._ref(fid, idx)
            if h:
                evicted = self._evict_chunk(self._chunk_path(h))
                if evicted is not None:
                    freed += evicted
                    gone.add(h)
                    (self.root / "refs" / fid / str(idx)).unlink(missing_ok=True)
        self._unmark(gone)
        return freed

    def enforce_quota(self, *, now: bool = False) -> None:
        """Evict least recently used chunks not in use until usage fits the quota.

        The walk over every chunk is skipped while this process's last count is under
        `QUOTA_RECHECK_S` old and either it, plus what this process published since, fits the quota or
        that walk already left all it could not evict (chunks being read; only a reader's close frees
        more, and closing walks with `now=True`). So filling a file of thousands of chunks walks the
        cache a few times, not once per chunk. Other processes' fills are seen at the next walk: the
        quota can be overshot by about a second of their filling.
        """
        if self.quota_bytes is None:
            return
        with self._lock:
            if not now and self._walked is not None:
                at, used = self._walked
                settled = used + self._filled <= self.quota_bytes or used > self.quota_bytes
                if settled and time.monotonic() - at < QUOTA_RECHECK_S:
                    return
        with _flock(self.root / "evict.lock", fcntl.LOCK_EX | fcntl.LOCK_NB) as got:
            if not got:
                return  # another process is at it
            chunks = sorted(self._chunk_stats(), key=lambda t: t[0])
            used, gone = sum(size for _, size, _ in chunks), set()
            for _, _, path in chunks:
                if used <= self.quota_bytes:
                    break
                evicted = self._evict_chunk(path)
                if evicted is not None:
                    used -= evicted
                    gone.add(path.name)
            self._unmark(gone)
        with self._lock:
            self._walked, self._filled = (time.monotonic(), used), 0

    # -- warm markers -----------------------------------------------------------------------------

    def chunk_hashes(self, uri: str, info: ObjectInfo) -> list[str] | None:
        """The hashes of every chunk of one source file, or None unless all of them are here."""
        fid, hashes = self.file_id(uri, info), []
        for idx in range(self.chunk_count(info.size)):
            h = self._ref(fid, idx)
            if h is None or not self._chunk_path(h).exists():
                return None
            hashes.append(h)
        return hashes

    def mark_warm(self, node: str, name: str, hashes: Iterable[str]) -> None:
        """Say that `node` holds dataset `name` warm while every chunk in `hashes` stays cached."""
        atomic_write(self.root / "warm" / node / name, "\n".join(hashes).encode(), durable=False)

    def warm(self, node: str) -> list[str]:
        """The datasets `node` holds warm (its markers)."""
        folder = self.root / "warm" / node
        return sorted(p.name for p in folder.glob("*") if not p.name.startswith("."))

    def _unmark(self, evicted: set[str]) -> None:
        """Remove every warm marker that lists one of the `evicted` chunks."""
        if not evicted:
            return
        for marker in (self.root / "warm").glob("*/*"):
            try:
                needs = marker.read_bytes().decode("ascii", "replace").split()
            except OSError:  # removed meanwhile, or a temporary file
                continue
            if not evicted.isdisjoint(needs):
                marker.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"NodeCache({str(self.root)!r}, quota_bytes={self.quota_bytes}, chunk_size={self.chunk_size})"

    # -- chunks ------------------------------------------------------------------------------------

    def read_chunk(
        self, source: Source, info: ObjectInfo, idx: int, out: memoryview, leases: dict[str, int]
    ) -> None:
        """Fill `out` (exactly the chunk's length) with chunk `idx` of the file, verified."""
        fid = self.file_id(source.uri, info)
        if self._read_cached(fid, idx, out, leases):
            return
        with _flock(self.root / "locks" / f"{fid}.{idx}", fcntl.LOCK_EX):
            if self._read_cached(fid, idx, out, leases):  # another process filled it meanwhile
                return
            self._fill(source, info, fid, idx, out, leases)
        self.enforce_quota()

    def _read_cached(self, fid: str, idx: int, out: memoryview, leases: dict[str, int]) -> bool:
        h = self._ref(fid, idx)
        if h is None:
            return False
        path = self._chunk_path(h)
        fd = leases.get(h)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return False
            fcntl.flock(fd, fcntl.LOCK_SH)
            leases[h] = fd
        if _pread_all(fd, out) != len(out) or digest(out) != h:
            self._discard(h, fd, leases)
            return False
        os.utime(fd)
        self._count(hits=1, bytes_served=len(out))
        return True

    def _fill(
        self, source: Source, info: ObjectInfo, fid: str, idx: int, out: memoryview, leases: dict[str, int]
    ) -> None:
        got = source.read_into(info.path, idx * self.chunk_size, out)
        if got != len(out):
            raise IntegrityError(f"{info.path}: origin gave {got} bytes for a {len(out)}-byte chunk")
        h = digest(out)
        # not fsync'ed: every read checks a chunk against its name, so one a crash tore is fetched again
        atomic_write(self._chunk_path(h), out, durable=False)
        fd = os.open(self._chunk_path(h), os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)  # leased before anyone can evict it
        leases[h] = fd
        atomic_write(self.root / "refs" / fid / str(idx), h.encode(), durable=False)
        self._count(misses=1, bytes_from_origin=got, bytes_served=got)
        with self._lock:
            self._filled += got

    def _discard(self, h: str, fd: int, leases: dict[str, int]) -> None:
        """Drop the bad chunk read through `fd`, unless another process already published a good one."""
        leases.pop(h, None)
        path = self._chunk_path(h)
        try:
            held, now = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
        self._count(corrupt_chunks=1)
        self._unmark({h})

    def _evict_chunk(self, path: Path) -> int | None:
        """Remove a chunk no reader holds: its size (0 if already gone), or None if it is leased."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None  # leased by a reader
        size = os.fstat(fd).st_size
        path.unlink(missing_ok=True)
        os.close(fd)
        self._count(evictions=1)
        return size

    def _ref(self, fid: str, idx: int) -> str | None:
        try:
            text = (self.root / "refs" / fid / str(idx)).read_bytes().decode("ascii", "replace").strip()
        except FileNotFoundError:
            return None
        return text if _HASH.fullmatch(text) else None  # empty or zeros: torn by a crash

    def _chunk_path(self, h: str) -> Path:
        return self.root / "chunks" / h[:2] / h

    def _chunk_len(self, size: int, idx: int) -> int:
        return min(self.chunk_size, size - idx * self.chunk_size)

    def _all_chunks(self) -> Iterator[Path]:
        for p in (self.root / "chunks").glob("*/*"):
            if not p.name.startswith("."):
                yield p

    def _chunk_stats(self) -> Iterator[tuple[int, int, Path]]:
        """(mtime_ns, size, path) of every published chunk; one removed meanwhile is skipped."""
        for p in self._all_chunks():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            yield st.st_mtime_ns, st.st_size, p

    def _count(self, **delta: int) -> None:
        with self._lock:
            now = asdict(self._stats)
            self._stats = CacheStats(**{k: v + delta.get(k, 0) for k, v in now.items()})
        fd = os.open(self.root / "stats", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # read-add-write, whole or not at all for other processes
            values = zip(_FIELDS, _unpack(os.pread(fd, _STATS.size, 0)), strict=True)
            os.pwrite(fd, _STATS.pack(*(v + delta.get(k, 0) for k, v in values)), 0)
        finally:
            os.close(fd)


class CachedReader:
    """A `RangeReader` over one source file through the node cache; `close()` ends its leases."""

    def __init__(self, cache: NodeCache, source: Source, info: ObjectInfo) -> None:
        self.cache, self.source, self.info = cache, source, info
        self.size, self.block = info.size, cache.chunk_size
        self._leases: dict[str, int] = {}
        self._lock = threading.Lock()

    def readinto(self, buf: memoryview, offset: int) -> None:
        end = min(offset + len(buf), self.size)
        pos, c = offset, self.cache.chunk_size
        while pos < end:
            idx = pos // c
            chunk_start, chunk_len = idx * c, self.cache._chunk_len(self.size, idx)
            lo, hi = pos - chunk_start, min(end - chunk_start, chunk_len)
            if lo == 0 and hi == chunk_len:
                self._read(idx, buf[pos - offset : pos - offset + chunk_len])
            else:
                tmp = bytearray(chunk_len)
                self._read(idx, memoryview(tmp))
                buf[pos - offset : pos - offset + hi - lo] = tmp[lo:hi]
            pos = chunk_start + hi

    def preload(self) -> None:
        """Fetch every chunk into the cache without keeping the bytes."""
        for idx in range(self.cache.chunk_count(self.size)):
            self._read(idx, memoryview(bytearray(self.cache._chunk_len(self.size, idx))))

    def _read(self, idx: int, out: memoryview) -> None:
        leases: dict[str, int] = {}
        self.cache.read_chunk(self.source, self.info, idx, out, leases)
        with self._lock:
            for h, fd in leases.items():
                if h in self._leases:
                    os.close(fd)
                else:
                    self._leases[h] = fd

    def close(self) -> None:
        """End the leases; chunks over the quota may go now."""
        with self._lock:
            for fd in self._leases.values():
                os.close(fd)
            self._leases.clear()
        self.cache.enforce_quota(now=True)

    def __enter__(self) -> CachedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unpack(raw: bytes) -> tuple[int, ...]:
    return _STATS.unpack(raw) if len(raw) == _STATS.size else (0,) * len(_FIELDS)


def _pread_all(fd: int, out: memoryview) -> int:
    done = 0
    while done < len(out):
        n = os.preadv(fd, [out[done:]], done)
        if n <= 0:
            break
        done += n
    return done


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[bool]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
