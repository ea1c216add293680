"""Hostile model files: headers built to exhaust memory, files that are not files, origins that lie.

Whatever the bytes, the header parser raises only `HeaderError`, spends memory in proportion to the
header, and agrees with `json.loads` on every header it accepts.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from swell.core.errors import DataError, HeaderError, IntegrityError
from swell.data import load_safetensors
from swell.data.cache import NodeCache
from swell.data.config import DatasetConfig
from swell.data.datasets import preload
from swell.data.header import DTYPES, MAX_RANK, parse_header
from swell.data.readers import FileReader, aligned_buffer, map_file, resident_fraction
from swell.data.sources import MemorySource, ObjectInfo, SourceReader, _memory
from tests.data.servers import range_server

ROOT = Path(__file__).resolve().parents[2]

# -- memory --------------------------------------------------------------------------------------

RSS_PROBE = """
import resource, sys
from swell.core.errors import HeaderError
from swell.data.loader import read_header
from swell.data.readers import FileReader

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_header(FileReader(sys.argv[1]))
    outcome = "accepted"
except HeaderError as exc:
    outcome = "HeaderError: " + str(exc)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(grown * 1024, outcome)
"""


def peak_growth(path: Path) -> tuple[int, str]:
    """Bytes the peak RSS of a fresh process grew by while reading `path`'s header, and the outcome."""
    done = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=True,
    )
    grown, outcome = done.stdout.strip().split(" ", 1)
    return int(grown), outcome


def write(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_a_48_mb_header_of_24_million_ones_is_refused_without_gigabytes(tmp_path: Path) -> None:
    ones = b",".join([b"1"] * 24_000_000)
    header = b'{"a":{"dtype":"U8","shape":[' + ones + b'],"data_offsets":[0,1]}}'
    assert len(header) > 48_000_000
    grown, outcome = peak_growth(write(tmp_path / "ones.safetensors", header, b"\0"))
    assert outcome.startswith("HeaderError") and f"more than {MAX_RANK} items" in outcome
    assert grown < 4 * len(header), f"peak RSS grew by {grown} bytes for a {len(header)}-byte header"


@pytest.mark.parametrize(
    "shape",
    [
        "objects",  # a member whose value holds millions of empty objects
        "members",  # a tensor with millions of keys
        "strings",  # __metadata__ with millions of tiny members
    ],
)
def test_wide_and_deep_headers_cost_memory_in_proportion(tmp_path: Path, shape: str) -> None:
    n = 3_000_000
    body = {
        "objects": b'{"a":{"x":[' + b",".join([b"{}"] * n) + b"]}}",
        "members": b'{"a":{' + b",".join(b'"k%d":0' % i for i in range(n)) + b"}}",
        "strings": b'{"__metadata__":{' + b",".join(b'"%d":""' % i for i in range(n)) + b"}}",
    }[shape]
    grown, outcome = peak_growth(write(tmp_path / "wide.safetensors", body))
    assert outcome.startswith("HeaderError")
    assert grown < 4 * len(body), f"peak RSS grew by {grown} bytes for a {len(body)}-byte header"


# -- files that are not files ---------------------------------------------------------------------


def refused_at_once(fn: Callable[[], object]) -> BaseException:
    """What `fn` raised; run in a thread so that a hang fails the test instead of stalling it."""
    caught: list[BaseException] = []

    def call() -> None:
        try:
            fn()
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "opening it hung"
    assert caught, "it was accepted"
    return caught[0]


@pytest.fixture(params=["fifo", "directory", "device", "socket"])
def not_a_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    kind = request.param
    if kind == "device":
        return Path("/dev/zero")
    path = tmp_path / f"{kind}.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        request.addfinalizer(server.close)
    return path


@pytest.mark.parametrize("mode", ["auto", "read", "direct", "mmap"])
def test_non_regular_files_are_refused_naming_the_path(not_a_file: Path, mode: str) -> None:
    error = refused_at_once(lambda: load_safetensors(not_a_file, mode=mode))
    assert isinstance(error, DataError) and str(not_a_file) in str(error)
    assert "not a regular file" in str(error)


def test_every_local_reader_refuses_them(not_a_file: Path) -> None:
    for fn in (FileReader, map_file, resident_fraction):
        error = refused_at_once(functools.partial(fn, not_a_file))
        assert isinstance(error, DataError) and str(not_a_file) in str(error), fn


def test_a_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    save_file({"w": torch.arange(4.0)}, str(tmp_path / "m.safetensors"))
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "m.safetensors")
    assert torch.equal(load_safetensors(tmp_path / "link.safetensors")["w"], torch.arange(4.0))


# -- sizes the origin declares --------------------------------------------------------------------


class Lying(MemorySource):
    """An origin that declares a size of its choosing for every file."""

    def __init__(self, files: dict[str, bytes], declared: int) -> None:
        super().__init__("memory://lying", files)
        self.declared = declared

    def info(self, path: str) -> ObjectInfo:
        return ObjectInfo(path, self.declared, "etag-1")


def small_model() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return struct.pack("<Q", len(header)) + header + torch.arange(2.0).numpy().tobytes()


def test_an_origin_declaring_another_size_than_the_manifest_is_refused_before_reading() -> None:
    data = small_model()
    source = Lying({"m": data}, declared=1 << 50)
    with pytest.raises(IntegrityError, match=f"declares {1 << 50} bytes, the manifest {len(data)}"):
        SourceReader(source, "m", ObjectInfo("m", len(data)))
    with pytest.raises(IntegrityError, match="ETag"):
        SourceReader(Lying({"m": data}, len(data)), "m", ObjectInfo("m", len(data), "etag-0"))
    reader = SourceReader(Lying({"m": data}, len(data)), "m", ObjectInfo("m", len(data), "etag-1"))
    assert reader.size == len(data)


def test_load_checks_what_the_origin_declares_against_the_expected_size(tmp_path: Path) -> None:
    data = small_model()
    _memory["memory://hostile"] = MemorySource("memory://hostile", {"m.safetensors": data})
    try:
        uri = "memory://hostile/m.safetensors"
        assert torch.equal(load_safetensors(uri, expected=len(data))["w"], torch.arange(2.0))
        with pytest.raises(IntegrityError, match="the manifest"):
            load_safetensors(uri, expected=len(data) + 1)
        cache = NodeCache(tmp_path / "cache", chunk_size=4096)
        with pytest.raises(IntegrityError, match="the manifest"):
            load_safetensors(uri, cache=cache, expected=ObjectInfo("m.safetensors", 10))
        assert cache.usage() == 0, "nothing was fetched"
        local = tmp_path / "m.safetensors"
        local.write_bytes(data)
        with pytest.raises(IntegrityError, match="the manifest"):
            load_safetensors(local, expected=len(data) - 1)
    finally:
        del _memory["memory://hostile"]


def test_a_header_claiming_more_than_the_machine_has_is_a_data_error() -> None:
    with pytest.raises(DataError, match="cannot allocate"):
        aligned_buffer(1 << 62)


def test_preload_refuses_an_origin_that_changed_under_a_pinned_manifest(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "m.safetensors").write_bytes(small_model())
    config = DatasetConfig(source=f"file://{origin}", revision="v1")
    preload("m", config, NodeCache(tmp_path / "cache", chunk_size=4096))
    (origin / "m.safetensors").write_bytes(small_model() + bytes(1000))
    fresh = NodeCache(tmp_path / "cache2", chunk_size=4096)
    (tmp_path / "cache2" / "manifests").mkdir(parents=True)
    os.rename(tmp_path / "cache" / "manifests" / "m", tmp_path / "cache2" / "manifests" / "m")
    with pytest.raises(IntegrityError, match="declares"):
        preload("m", config, fresh)
    assert fresh.usage() == 0


def test_a_remote_file_is_sized_by_its_manifest_through_http(tmp_path: Path) -> None:
    (tmp_path / "m.safetensors").write_bytes(small_model())
    with range_server(tmp_path) as (url, _):
        with pytest.raises(IntegrityError, match="the manifest"):
            load_safetensors(f"{url}/m.safetensors", expected=len(small_model()) * 1000)
        assert torch.equal(
            load_safetensors(f"{url}/m.safetensors", expected=len(small_model()))["w"], torch.arange(2.0)
        )


# -- every header fails only with HeaderError ------------------------------------------------------


def reference(raw: bytes) -> list[tuple[str, str, tuple[int, ...], int, int]] | None:
    """What `json.loads` makes of a header that is valid in every respect, else None."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    doc.pop("__metadata__", None)
    out = []
    start = 8 + len(raw)
    for name, v in doc.items():
        if not (isinstance(v, dict) and set(v) == {"dtype", "shape", "data_offsets"}):
            return None
        begin, end = v["data_offsets"]
        out.append((name, v["dtype"], tuple(v["shape"]), start + begin, start + end))
    return sorted(out, key=lambda e: (e[3], e[4]))


STRUCTURE = st.text(alphabet='{}[],:"0123456789-.eE \\nu\tatrlsf', max_size=80)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=STRUCTURE, size=st.integers(0, 64))
def test_structural_noise_fails_only_with_header_error(text: str, size: int) -> None:
    raw = text.encode()
    try:
        parse_header(raw, 8 + len(raw) + size)
    except HeaderError:
        return
    assert reference(raw) is not None  # accepted only what json.loads reads as a header


_scalar = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4)
_any = st.recursive(
    _scalar,
    lambda kids: st.lists(kids, max_size=20) | st.dictionaries(st.text(max_size=3), kids, max_size=5),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.dictionaries(st.text(max_size=4), _any, max_size=4), size=st.integers(0, 256), pretty=st.booleans()
)
def test_random_json_fails_only_with_header_error(doc: dict[str, Any], size: int, pretty: bool) -> None:
    raw = json.dumps(doc, indent=1 if pretty else None).encode()
    try:
        parsed = parse_header(raw, 8 + len(raw) + size)
    except HeaderError:
        return
    assert [(e.name, e.dtype, e.shape, e.begin, e.end) for e in parsed.tensors] == reference(raw)


@st.composite
def valid_headers(draw: st.DrawFn) -> tuple[bytes, int]:
    names = draw(st.lists(st.text(alphabet='ab"\\{}[],: \u00e9\u2603', max_size=6), unique=True, max_size=6))
    entries: dict[str, Any] = {}
    offset = 0
    for name in names:
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(0, 3), max_size=MAX_RANK))
        nbytes = DTYPES[dtype][0] * (0 if 0 in shape else int(torch.tensor(shape or [1]).prod()))
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if draw(st.booleans()):
        entries["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3))
    items = list(entries.items())
    draw(st.randoms()).shuffle(items)
    raw = json.dumps(dict(items), indent=draw(st.sampled_from([None, 0, 2]))).encode()
    return raw + b" " * draw(st.integers(0, 3)), offset


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=valid_headers())
def test_valid_headers_parse_as_json_loads_reads_them(header: tuple[bytes, int]) -> None:
    raw, data = header
    parsed = parse_header(raw, 8 + len(raw) + data)
    got = [(e.name, e.dtype, e.shape, e.begin, e.end) for e in parsed.tensors]
    assert got == reference(raw)
    assert parsed.metadata == json.loads(raw).get("__metadata__", {})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=valid_headers(), cut=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_corrupted_headers_fail_only_with_header_error(
    header: tuple[bytes, int], cut: int, byte: int
) -> None:
    raw, data = header
    mutated = bytearray(raw)
    if mutated:
        mutated[cut % len(mutated)] = byte
    try:
        parsed = parse_header(bytes(mutated), 8 + len(mutated) + data)
    except HeaderError:
        return
    assert [(e.name, e.dtype, e.shape, e.begin, e.end) for e in parsed.tensors] == reference(bytes(mutated))
