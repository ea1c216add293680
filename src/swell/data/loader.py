"""Load safetensors files at the speed of the disk: large parallel reads into one buffer, tensors as views.

The whole file (header included, so that offsets stay page-aligned for O_DIRECT) is read into one
page-aligned buffer by `threads` workers in `block`-sized reads; every tensor is a view of that buffer
with its dtype and shape. Nothing is ever unpickled, and the header is validated before anything large
is allocated. With CUDA, blocks pass through a ring of pinned staging buffers and are copied to the
device as they land, so host memory stays at a few blocks whatever the model's size (`_stream`).

Modes for a local file: `read` (parallel buffered reads), `direct` (the same with O_DIRECT, into huge
pages) and, on the CPU only, `mmap`: a copy-on-write mapping of the file, read into the page cache about
a GiB ahead and mapped 64 MiB at a time by up to four workers (`_page_in`); tensors are views of the
page cache, with no copy when the file is cached. `auto` goes through the page cache when at least half
the file is already there (`mmap` on the CPU, `read` for CUDA), and reads it `direct` otherwise: on the
development VM, cold, `direct` read an 8 GB file at 1.5-1.8 GB/s against 1.2-1.3 for `mmap`
(docs/benchmarks.md). Like safetensors' own mapping, a mapped tensor would see a later in-place rewrite
of the file; the node cache and `dataset_path` only ever publish files by rename, never rewrite them.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from swell.core.errors import DataError, IntegrityError, ValidationError
from swell.data.config import DatasetConfig
from swell.data.header import DTYPES, PREFIX_BYTES, Header, TensorEntry, header_length, parse_header
from swell.data.readers import ALIGN, FileReader, RangeReader, aligned_buffer
from swell.data.sources import ObjectInfo

if TYPE_CHECKING:
    import torch

    from swell.data.cache import NodeCache

DEFAULT_BLOCK = 8 * 1024 * 1024
DEFAULT_THREADS = 12
PAGE = 4096
PAGE_IN_BLOCK = 64 * 1024 * 1024
PAGE_IN_AHEAD = 16  # blocks asked for ahead of the mapping: 1 GiB in flight
PAGE_IN_WORKERS = 4
CACHED_ENOUGH = 0.5  # resident fraction from which `auto` reads through the page cache
RING_SPARE = 4  # staging buffers of a GPU load beyond one per reader thread
MODES = ("auto", "read", "direct", "mmap")


@dataclass
class LoadTimings:
    """Where a load spent its time, in seconds; `bytes` is the file's size."""

    header: float = 0.0
    read: float = 0.0
    total: float = 0.0
    bytes: int = 0

    @property
    def gbps(self) -> float:
        return self.bytes / self.total / 1e9 if self.total else 0.0


def read_header(reader: RangeReader) -> Header:
    """Read and validate the header of the safetensors file behind `reader`."""
    prefix = bytearray(PREFIX_BYTES)
    reader.readinto(memoryview(prefix), 0)
    n = header_length(bytes(prefix), reader.size)
    raw = bytearray(n)
    reader.readinto(memoryview(raw), PREFIX_BYTES)
    return parse_header(raw, reader.size)  # no copy: parsing reads a bytearray as well


def load_safetensors(
    path: str | Path,
    device: str = "cpu",
    *,
    cache: NodeCache | None = None,
    config: DatasetConfig | None = None,
    threads: int = DEFAULT_THREADS,
    block: int = DEFAULT_BLOCK,
    mode: str = "auto",
    timings: LoadTimings | None = None,
    expected: ObjectInfo | int | None = None,
) -> dict[str, torch.Tensor]:
    """The state dict of a safetensors file as tensors on `device` (views of one buffer).

    `path` is a local path (a regular file: anything else is a `DataError`) or a source URI
    (`s3://...`, `http(s)://...`, with credentials from `config` or the AWS_* variables). A remote file
    streams in ranged reads; with `cache`, through the node cache, which it fills as it reads (one
    origin read per chunk however many processes load it). `mode` picks how a local file is read (see
    the module's docstring). With `expected` (the file's manifest entry, or its size), the size the
    file has, or the origin declares, must be that one before any buffer is sized from it.
    """
    if mode not in MODES:
        raise ValidationError(f"mode must be one of {MODES}, not {mode!r}", field="mode")
    device = str(_target(device))
    local = str(path).removeprefix("file://")
    chosen = _choose(local, mode, device)
    if chosen == "mmap":
        return _load_mapped(local, threads, block, timings or LoadTimings(), expected)
    reader = _open(str(path), cache, config, direct=chosen == "direct", expected=expected)
    try:
        step = getattr(reader, "block", block)  # the cache reads whole chunks
        return load_from_reader(reader, device, threads=threads, block=step, timings=timings)
    finally:
        reader.close()


def _target(device: str) -> torch.device:
    """`device` as a torch device, refused with a clear error unless it is the CPU or a usable GPU."""
    import torch

    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValidationError(f"unknown device {device!r}: {exc}", field="device") from None
    if target.type not in ("cpu", "cuda"):
        raise ValidationError(f"device must be 'cpu' or 'cuda[:N]', not {device!r}", field="device")
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise ValidationError(f"device {device!r} asked for, but CUDA is not available", field="device")
        if target.index is not None and target.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ValidationError(f"device {device!r}: only {count} CUDA device(s) here", field="device")
    return target


def _choose(path: str, mode: str, device: str) -> str:
    from swell.data.readers import resident_fraction
    from swell.data.sources import is_remote

    if is_remote(path):
        return "read"
    if mode == "auto":
        if not os.path.isfile(path):
            return "read"  # which says the file is missing
        if resident_fraction(path) >= CACHED_ENOUGH:
            return "mmap" if device == "cpu" else "read"
        return "direct"
    if mode == "mmap" and device != "cpu":
        raise ValidationError("mode 'mmap' maps the file for the CPU; use 'read' or 'direct'", field="mode")
    return mode


def _load_mapped(
    path: str, threads: int, block: int, t: LoadTimings, expected: ObjectInfo | int | None
) -> dict[str, torch.Tensor]:
    import torch

    from swell.data.readers import map_file

    start = time.perf_counter()
    reader = _local(path, expected, direct=False)
    try:
        header = read_header(reader)
        t.header = time.perf_counter() - start
        mapping = map_file(reader.fd)  # the file just checked, not the path again
        workers = min(threads, PAGE_IN_WORKERS)
        _page_in(mapping, reader.fd, header.file_size, workers, max(block, PAGE_IN_BLOCK))
    finally:
        reader.close()
    base = torch.frombuffer(mapping, dtype=torch.uint8)[: header.file_size]
    out = {e.name: _view(base, e) for e in header.tensors}
    t.total, t.bytes = time.perf_counter() - start, header.file_size
    t.read = t.total - t.header
    return out


def _page_in(mapping: mmap.mmap, fd: int, size: int, workers: int, block: int) -> None:
    """Read the file into the page cache and map every page of it, `block` bytes at a time.

    Reads are asked for `PAGE_IN_AHEAD` blocks ahead of the mapping (posix_fadvise WILLNEED queues them
    and returns), so the disk has about a GiB in flight, as deep as fio's best queue on the development
    VM; `workers` threads then fault each block in, one byte per page. On the development VM it read
    4-5 % faster cold than faulting alone in an A/B run, and 1.5-1.7 against 0.8-1.4 GB/s in a faster
    window (docs/benchmarks.md); MADV_POPULATE_READ mapped no faster cold and slower warm.
    """
    import numpy as np

    starts = range(0, size, block)
    pages = np.frombuffer(mapping, dtype=np.uint8, count=size)

    def ask(i: int) -> None:
        if i < len(starts):
            os.posix_fadvise(fd, starts[i], block, os.POSIX_FADV_WILLNEED)

    def fault_in(i: int) -> None:
        ask(i + PAGE_IN_AHEAD)
        pages[starts[i] : starts[i] + block : PAGE].sum()  # numpy drops the GIL in the loop

    for i in range(PAGE_IN_AHEAD):
        ask(i)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="swell-page-in") as pool:
        list(pool.map(fault_in, range(len(starts))))


def _open(
    path: str,
    cache: NodeCache | None,
    config: DatasetConfig | None,
    *,
    direct: bool,
    expected: ObjectInfo | int | None = None,
) -> RangeReader:
    from swell.data.sources import checked_info, is_remote, open_remote, open_source, split_uri

    if not is_remote(path):
        return _local(path.removeprefix("file://"), expected, direct=direct)
    if cache is None:
        return open_remote(path, config, expected=expected)
    root, name = split_uri(path)
    base = config.model_copy(update={"source": root}) if config else DatasetConfig(source=root)
    source = open_source(base)
    return cache.reader(source, name, checked_info(source, name, expected))


def _local(path: str, expected: ObjectInfo | int | None, *, direct: bool) -> FileReader:
    """A reader on a local regular file whose size, with `expected`, is the expected one."""
    reader = FileReader(path, direct=direct)
    want = expected.size if isinstance(expected, ObjectInfo) else expected
    if want is not None and reader.size != want:
        reader.close()
        raise IntegrityError(f"{path}: the file holds {reader.size} bytes, the manifest {want}")
    return reader


def load_from_reader(
    reader: RangeReader,
    device: str = "cpu",
    *,
    threads: int = DEFAULT_THREADS,
    block: int = DEFAULT_BLOCK,
    timings: LoadTimings | None = None,
) -> dict[str, torch.Tensor]:
    """Like `load_safetensors`, from any `RangeReader` (a local file, a cached or remote object)."""
    import torch

    t = timings if timings is not None else LoadTimings()
    start = time.perf_counter()
    header = read_header(reader)
    t.header = time.perf_counter() - start
    target = _target(device)
    if target.type == "cuda":
        base = torch.empty(header.file_size, dtype=torch.uint8, device=target)
        _stream(reader, base, header.file_size, threads, block, slots=threads + RING_SPARE)
    else:
        base = torch.frombuffer(aligned_buffer(header.file_size), dtype=torch.uint8)[: header.file_size]
        _fill(reader, base, header.file_size, threads, block)
    t.read = time.perf_counter() - start - t.header
    out = {e.name: _view(base, e) for e in header.tensors}
    t.total, t.bytes = time.perf_counter() - start, header.file_size
    return out


def _blocks(end: int, block: int) -> Iterator[tuple[int, int]]:
    """Blocks from byte 0 (the header rides along), so they line up with pages and cache chunks."""
    for a in range(0, end, block):
        yield a, min(a + block, end)


def _read_block(reader: RangeReader, view: memoryview, a: int, b: int) -> None:
    """Bytes [a, b) of the file into `view`, padded to whole pages where `view` has room (O_DIRECT)."""
    padded = _round_up(b - a)
    reader.readinto(view[: padded if padded <= len(view) else b - a], a)


def _each_block(read: Callable[[int, int], None], end: int, threads: int, block: int) -> None:
    """`read(a, b)` for every block, from `threads` threads; after the first error, no block begins.

    The threads take blocks in file order from one queue, so a slow read (a straggling connection to a
    remote source) delays only its own block. Giving each thread a run of consecutive blocks of its own
    instead, as runai-model-streamer does, was no faster on the development VM (an in-process A/B on
    the 8 GB file, O_DIRECT: 1.38-1.73 GB/s against 1.28-1.66, within the disk's noise).
    """
    failed = threading.Event()

    def guarded(a: int, b: int) -> None:
        if failed.is_set():
            return
        try:
            read(a, b)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="swell-load") as pool:
        for fut in as_completed([pool.submit(guarded, a, b) for a, b in _blocks(end, block)]):
            fut.result()


def _fill(reader: RangeReader, host: torch.Tensor, end: int, threads: int, block: int) -> None:
    """Read the file straight into `host`, the buffer the tensors will be views of."""
    view = memoryview(host.numpy().data)
    _each_block(lambda a, b: _read_block(reader, view[a:], a, b), end, threads, block)


def _stream(
    reader: RangeReader, dst: torch.Tensor, end: int, threads: int, block: int, *, slots: int
) -> None:
    """Read the file into `dst` (on a GPU) through a ring of `slots` staging buffers of `block` bytes.

    Each reader thread takes a free slot, fills it and queues its copy to the device, non-blocking from
    pinned memory, so copies overlap the reads; a slot is taken again only once the copy out of it has
    finished (a CUDA event). Host memory stays at `slots` blocks whatever the model's size: no pinned
    copy of the whole file. On the CPU (used by the tests) the copy is a plain synchronous one.
    """
    import torch

    cuda = dst.device.type == "cuda"
    size = _round_up(block)
    ring = [torch.empty(size, dtype=torch.uint8, pin_memory=cuda) for _ in range(max(1, slots))]
    views = [memoryview(buf.numpy().data) for buf in ring]
    copied: list[torch.cuda.Event | None] = [None] * len(ring)
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    for slot in range(len(ring)):
        free.put(slot)
    stream = torch.cuda.current_stream(dst.device) if cuda else None

    def read(a: int, b: int) -> None:
        slot = free.get()
        try:
            done = copied[slot]
            if done is not None:
                done.synchronize()  # the slot's last copy to the device has finished
            _read_block(reader, views[slot], a, b)
            if stream is None:
                dst[a:b].copy_(ring[slot][: b - a])
                return
            with torch.cuda.stream(stream):  # the caller's stream: a thread's own current one is the default
                dst[a:b].copy_(ring[slot][: b - a], non_blocking=True)
                copied[slot] = event = torch.cuda.Event()
                event.record(stream)
        finally:
            free.put(slot)

    _each_block(read, end, threads, block)
    if stream is not None:
        stream.synchronize()


def _round_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _view(base: torch.Tensor, e: TensorEntry) -> torch.Tensor:
    import torch

    dtype = getattr(torch, DTYPES[e.dtype][1], None)
    if dtype is None:
        raise DataError(f"tensor {e.name!r}: dtype {e.dtype} is not supported by this torch")
    raw = base[e.begin : e.end]
    if e.begin % dtype.itemsize:  # unaligned: copy out rather than view
        raw = raw.clone()
    return raw.view(dtype).reshape(e.shape)
