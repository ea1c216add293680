"""The loader equals safetensors bit for bit; hostile headers get a HeaderError, never a crash."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from swell.core.errors import HeaderError, ValidationError
from swell.data import LoadTimings, load_safetensors
from swell.data.cache import NodeCache
from swell.data.header import MAX_HEADER_BYTES, parse_header
from tests.data.servers import range_server


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "bf16": torch.randn(64, 33, generator=g).bfloat16(),
        "fp16": torch.randn(5, 7, 3, generator=g).half(),
        "fp32": torch.randn(1000, 300, generator=g),
        "fp64": torch.randn(17, generator=g).double(),
        "int8": torch.randint(-128, 127, (301,), dtype=torch.int8, generator=g),
        "uint8": torch.randint(0, 255, (9, 9), dtype=torch.uint8, generator=g),
        "int16": torch.randint(-300, 300, (13,), dtype=torch.int16, generator=g),
        "int32": torch.randint(-(2**30), 2**30, (11,), dtype=torch.int32, generator=g),
        "int64": torch.randint(-(2**40), 2**40, (3, 4), dtype=torch.int64, generator=g),
        "bool": torch.rand(29, generator=g) > 0.5,
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 8),
        "empty_int": torch.zeros(4, 0, dtype=torch.int32),
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k].dtype, a[k].shape) == (b[k].dtype, b[k].shape), k
        assert a[k].contiguous().view(-1).view(torch.uint8).tolist() == (
            b[k].contiguous().view(-1).view(torch.uint8).tolist()
        ), k


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_file(_tensors(), path, metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("mode", ["auto", "read", "direct", "mmap"])
@pytest.mark.parametrize("block", [4096, 1 << 20])
def test_equals_safetensors(model: Path, mode: str, block: int) -> None:
    timings = LoadTimings()
    _same(load_safetensors(model, mode=mode, block=block, timings=timings), load_file(model))
    assert timings.bytes == model.stat().st_size


def test_mapping_pages_in_every_block(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from swell.data import loader
    from swell.data.readers import drop_page_cache, resident_fraction

    monkeypatch.setattr(loader, "PAGE_IN_BLOCK", 64 * 1024)  # about 20 blocks, more than read ahead
    drop_page_cache(model)
    _same(load_safetensors(model, mode="mmap", block=4096), load_file(model))
    assert resident_fraction(model) == 1.0


@pytest.mark.parametrize(("threads", "slots", "block"), [(4, 2, 4096), (1, 1, 1000), (8, 12, 1 << 16)])
def test_the_staging_ring_delivers_every_block(model: Path, threads: int, slots: int, block: int) -> None:
    """The GPU path's ring, run on the CPU: fewer slots than threads, blocks that are not whole pages."""
    from swell.data.loader import _stream
    from swell.data.readers import FileReader

    size = model.stat().st_size
    dst = torch.zeros(size, dtype=torch.uint8)
    reader = FileReader(model, direct=True)
    try:
        _stream(reader, dst, size, threads, block, slots=slots)
    finally:
        reader.close()
    assert dst.numpy().tobytes() == model.read_bytes()


def test_a_failed_read_stops_the_ring(model: Path) -> None:
    from swell.core.errors import DataError
    from swell.data.loader import _stream
    from swell.data.readers import FileReader

    class Failing(FileReader):
        calls = 0

        def readinto(self, buf: memoryview, offset: int) -> None:
            Failing.calls += 1
            if offset >= 8 * 4096:
                raise DataError("disk gone")
            super().readinto(buf, offset)

    size = model.stat().st_size
    with pytest.raises(DataError, match="disk gone"):
        _stream(Failing(model), torch.zeros(size, dtype=torch.uint8), size, 2, 4096, slots=2)
    assert Failing.calls < size // 4096  # what had not begun was dropped


@pytest.mark.parametrize("mode", ["read", "mmap"])
def test_unaligned_offsets_are_copied_not_broken(tmp_path: Path, mode: str) -> None:
    data = torch.arange(6, dtype=torch.float32)
    header = {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}
    header["b"] = {"dtype": "F32", "shape": [6], "data_offsets": [1, 25]}
    raw = json.dumps(header).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x07" + data.numpy().tobytes())
    _same(load_safetensors(path, mode=mode), load_file(path))


def test_mode_choice(model: Path) -> None:
    from swell.data.loader import _choose
    from swell.data.readers import drop_page_cache, resident_fraction

    model.read_bytes()
    if resident_fraction(model) == 1.0:  # a filesystem without a page cache to tell has none to use
        assert (_choose(str(model), "auto", "cpu"), _choose(str(model), "auto", "cuda")) == ("mmap", "read")
    drop_page_cache(model)
    if resident_fraction(model) == 0.0:
        assert (_choose(str(model), "auto", "cpu"), _choose(str(model), "auto", "cuda")) == (
            "direct",
            "direct",
        )
    assert _choose("/no/such.safetensors", "auto", "cpu") == "read"
    assert _choose("http://h/x.safetensors", "mmap", "cpu") == "read"
    with pytest.raises(ValidationError, match="mmap"):
        _choose("/x.safetensors", "mmap", "cuda")
    with pytest.raises(ValidationError, match="mode must be one of"):
        load_safetensors("/x.safetensors", mode="fast")


def test_remote_streaming_and_through_the_cache(model: Path, tmp_path: Path) -> None:
    with range_server(model.parent) as (url, counter):
        _same(load_safetensors(f"{url}/{model.name}"), load_file(model))
        cache = NodeCache(tmp_path / "cache", chunk_size=64 * 1024)
        for _ in range(2):
            _same(load_safetensors(f"{url}/{model.name}", cache=cache), load_file(model))
    stats = cache.statistics()
    assert stats.bytes_from_origin == model.stat().st_size  # the second load came from the cache
    assert stats.misses == cache.chunk_count(model.stat().st_size)
    assert stats.hits >= stats.misses
    assert counter.bytes >= 2 * model.stat().st_size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda(model: Path) -> None:
    got = load_safetensors(model, device="cuda")
    assert all(t.is_cuda for t in got.values())
    _same({k: v.cpu() for k, v in got.items()}, load_file(model))


def _file(tmp_path: Path, header: object, data: bytes = b"", raw: bytes | None = None) -> Path:
    body = raw if raw is not None else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def _t(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"a": _t("F32", [2], 0, 8), "b": _t("F32", [2], 4, 12)}, bytes(12), "overlaps"),
        ({"a": _t("F32", [2], 0, 8)}, bytes(4), "past the end"),
        ({"a": _t("F32", [3], 0, 8)}, bytes(8), "does not fill"),
        ({"a": _t("F33", [2], 0, 8)}, bytes(8), "unknown dtype"),
        ({"a": _t("F32", [-2], 0, 8)}, bytes(8), "shape"),
        ({"a": _t("F32", [2**40, 2**40], 0, 8)}, bytes(8), "spans more than"),
        ({"a": _t("F32", [2**64, 0], 0, 0)}, b"", "shape must be a list of integers from 0"),
        ({"a": _t("F32", [2**62, 2**62, 0], 0, 0)}, b"", "spans more than"),
        ({"a": _t("F32", [2**63, 0], 0, 0)}, b"", "shape must be"),
        ({"a": _t("U8", [0], 0, 2**64)}, b"", "data_offsets must be"),
        ({"a": _t("F32", [1.0], 0, 4)}, bytes(4), "shape"),
        ({"a": _t("F32", [1] * 17, 0, 4)}, bytes(4), "more than 16 items"),
        ({"a": _t("F32", [[1]], 0, 4)}, bytes(4), "inside an array"),
        ({"a": {**_t("F32", [1], 0, 4), "x": {"y": {}}}}, bytes(4), "deeper"),
        ({"a": {f"k{n}": 0 for n in range(5000)}}, b"", "more than 4096 members"),
        ({"__metadata__": {f"k{n}": "v" for n in range(5000)}}, b"", "more than 4096 members"),
        ({"a": _t("U8", [1], 0, 1), "__metadata__": ["x"]}, bytes(1), "__metadata__"),
        ({"a": 1}, b"", "exactly"),
        ({"a": _t("F32", [2], 8, 16)}, bytes(16), "gap"),
        ({"a": _t("F32", [2], 0, 8)}, bytes(9), "trailing"),
        ({"a": _t("F32", [2], 8, 0)}, bytes(8), "end before"),
        ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8), "exactly"),
        ({"a": _t("F32", [True], 0, 4)}, bytes(4), "shape"),
        ([1, 2], b"", "JSON object"),
        ({"__metadata__": {"a": 1}}, b"", "__metadata__"),
    ],
)
def test_hostile_headers(tmp_path: Path, header: object, data: bytes, message: str) -> None:
    with pytest.raises(HeaderError, match=message):
        load_safetensors(_file(tmp_path, header, data))


def test_bad_lengths_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"\x01\x02")
    with pytest.raises(HeaderError, match="too short"):
        load_safetensors(tmp_path / "short")
    (tmp_path / "huge").write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    with pytest.raises(HeaderError, match="exceeds"):
        load_safetensors(tmp_path / "huge")
    (tmp_path / "past").write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(HeaderError, match="past the end"):
        load_safetensors(tmp_path / "past")
    with pytest.raises(HeaderError, match="not valid JSON"):
        load_safetensors(_file(tmp_path, None, raw=b"\xff{"))
    huge = b'{"a": {"dtype": "U8", "shape": [' + b"1" * 5000 + b'], "data_offsets": [0, 1]}}'
    with pytest.raises(HeaderError, match="shape must be"):  # 5000 digits: never converted
        load_safetensors(_file(tmp_path, None, b"\0", raw=huge))
    with pytest.raises(HeaderError, match="JSON object"):
        load_safetensors(_file(tmp_path, None, raw=b"[" * 100_000))
    with pytest.raises(HeaderError, match="inside an array"):
        load_safetensors(_file(tmp_path, None, raw=b'{"a":' + b"[" * 100_000))
    with pytest.raises(HeaderError, match="deeper"):
        load_safetensors(_file(tmp_path, None, raw=b'{"a":' * 100_000 + b"{}" + b"}" * 100_000))
    with pytest.raises(HeaderError, match="deeper"):
        load_safetensors(_file(tmp_path, None, raw=b'{"a":' * 100_000))
    one = b'{"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}'
    twice = b'{"a": ' + one + b', "a": ' + one + b"}"
    with pytest.raises(HeaderError, match="'a' twice"):
        load_safetensors(_file(tmp_path, None, b"\0", raw=twice))


@pytest.mark.parametrize("device", ["tpu", "mps", "cuda:99", "cuda"])
def test_devices_it_cannot_serve_are_refused(model: Path, device: str) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValidationError) as info:
        load_safetensors(model, device=device)
    assert info.value.field == "device" and repr(device) in str(info.value)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("block", [4096, 1 << 20])
def test_to_cuda_in_blocks_and_through_the_cache(model: Path, tmp_path: Path, block: int) -> None:
    want = load_file(model)
    got = load_safetensors(model, device="cuda:0", block=block, mode="direct")
    assert all(t.device.type == "cuda" for t in got.values())
    _same({k: v.cpu() for k, v in got.items()}, want)
    with range_server(model.parent) as (url, _):
        cache = NodeCache(tmp_path / "cache", chunk_size=64 * 1024)
        got = load_safetensors(f"{url}/{model.name}", device="cuda", cache=cache)
    _same({k: v.cpu() for k, v in got.items()}, want)


@needs_cuda
def test_cuda_unaligned_offsets(tmp_path: Path) -> None:
    header = {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}
    header["b"] = {"dtype": "F32", "shape": [6], "data_offsets": [1, 25]}
    raw = json.dumps(header).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x07" + torch.arange(6.0).numpy().tobytes())
    got = load_safetensors(path, device="cuda")
    _same({k: v.cpu() for k, v in got.items()}, load_file(path))


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4),
    max_leaves=12,
)
_entry = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "BF16", "I8", "BOOL", "F64", "X"]) | _json,
        "shape": st.lists(st.integers(-2, 2**33), max_size=4) | _json,
        "data_offsets": st.lists(st.integers(-2, 2**40), min_size=0, max_size=3) | _json,
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.dictionaries(st.text(max_size=4), _entry | _json, max_size=5), size=st.integers(0, 4096))
def test_fuzzed_headers_fail_only_with_header_error(header: dict[str, object], size: int) -> None:
    raw = json.dumps(header).encode()
    try:
        parsed = parse_header(raw, 8 + len(raw) + size)
    except HeaderError:
        return
    assert sum(t.nbytes for t in parsed.tensors) == size  # accepted: covers exactly the data


@settings(max_examples=100, deadline=None)
@given(blob=st.binary(max_size=200))
def test_fuzzed_files_fail_only_with_header_error(
    tmp_path_factory: pytest.TempPathFactory, blob: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob if blob[:1] == b"{" else blob)
    try:
        tensors = load_safetensors(path)
    except HeaderError:
        return
    assert sum(t.nbytes for t in tensors.values()) <= len(blob)
