"""Strict parsing of safetensors headers: pure code, no I/O, never a huge allocation.

A safetensors file is `u64 little-endian header length | JSON header | data`. Every entry names a dtype,
a shape and `data_offsets` [begin, end) relative to the start of the data. The parser refuses anything a
loader could trip on: sizes out of bounds, unknown dtypes, shapes that disagree with their byte span,
offsets outside the file, overlapping tensors or gaps in the coverage.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from swell.core.errors import HeaderError

MAX_HEADER_BYTES = 100 * 1024 * 1024
PREFIX_BYTES = 8

# safetensors dtype -> (item size in bytes, torch dtype name)
DTYPES: dict[str, tuple[int, str]] = {
    "BOOL": (1, "bool"),
    "U8": (1, "uint8"),
    "I8": (1, "int8"),
    "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"),
    "I16": (2, "int16"),
    "U16": (2, "uint16"),
    "F16": (2, "float16"),
    "BF16": (2, "bfloat16"),
    "I32": (4, "int32"),
    "U32": (4, "uint32"),
    "F32": (4, "float32"),
    "I64": (8, "int64"),
    "U64": (8, "uint64"),
    "F64": (8, "float64"),
    "C64": (8, "complex64"),
}


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True, slots=True)
class Header:
    data_start: int  # absolute offset of the first data byte
    file_size: int
    tensors: tuple[TensorEntry, ...]  # sorted by offset
    metadata: dict[str, str]


def header_length(prefix: bytes, file_size: int) -> int:
    """The JSON header's length from the 8-byte prefix, bounded by the file and MAX_HEADER_BYTES."""
    if len(prefix) < PREFIX_BYTES or file_size < PREFIX_BYTES:
        raise HeaderError(f"file too short for a safetensors header ({file_size} bytes)")
    n = int.from_bytes(prefix[:PREFIX_BYTES], "little")
    if n > MAX_HEADER_BYTES:
        raise HeaderError(f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if PREFIX_BYTES + n > file_size:
        raise HeaderError(f"header length {n} runs past the end of the {file_size}-byte file")
    return n


def parse_header(raw: bytes, file_size: int) -> Header:
    """Validate the JSON header `raw` of a file of `file_size` bytes."""
    data_start = PREFIX_BYTES + len(raw)
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except HeaderError:
        raise
    except (ValueError, RecursionError) as exc:  # ValueError: bad UTF-8, bad JSON, ints past 4300 digits
        raise HeaderError(f"header is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HeaderError("header must be a JSON object")
    metadata = _metadata(doc.pop("__metadata__", None))
    entries = [_entry(name, value, data_start) for name, value in doc.items()]
    entries.sort(key=lambda e: (e.begin, e.end))
    _check_coverage(entries, data_start, file_size)
    return Header(data_start, file_size, tuple(entries), metadata)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object whose keys are all distinct: a repeated name would make the header ambiguous."""
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise HeaderError(f"header names {key!r} twice")
        out[key] = value
    return out


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise HeaderError("__metadata__ must map strings to strings")
    return dict(value)


def _entry(name: str, value: object, data_start: int) -> TensorEntry:
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise HeaderError(f"tensor {name!r}: needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise HeaderError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise HeaderError(f"tensor {name!r}: shape must be a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise HeaderError(f"tensor {name!r}: data_offsets must be two non-negative integers")
    begin, end = offsets
    if end < begin:
        raise HeaderError(f"tensor {name!r}: data_offsets end before they begin")
    if math.prod(shape) * DTYPES[dtype][0] != end - begin:
        raise HeaderError(f"tensor {name!r}: shape {shape} of {dtype} does not fill {end - begin} bytes")
    return TensorEntry(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_coverage(entries: list[TensorEntry], data_start: int, file_size: int) -> None:
    cursor = data_start
    for e in entries:
        if e.begin < cursor:
            raise HeaderError(f"tensor {e.name!r} overlaps the tensor before it")
        if e.begin > cursor:
            raise HeaderError(f"tensor {e.name!r} leaves a gap of {e.begin - cursor} bytes before it")
        if e.end > file_size:
            raise HeaderError(f"tensor {e.name!r} runs past the end of the {file_size}-byte file")
        cursor = e.end
    if cursor != file_size:
        raise HeaderError(f"{file_size - cursor} trailing bytes after the last tensor")
