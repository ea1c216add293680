"""Strict parsing of safetensors headers: pure code, no I/O, never a huge allocation.

A safetensors file is `u64 little-endian header length | JSON header | data`. Every entry names a dtype,
a shape and `data_offsets` [begin, end) relative to the start of the data. The parser refuses anything a
loader could trip on: sizes out of bounds, unknown dtypes, shapes that disagree with their byte span or
have more than `MAX_RANK` dimensions, dimensions past 63 bits, offsets outside the file, overlapping
tensors or gaps in the coverage. Whatever is wrong, the error is a `HeaderError`, and what parsing
costs in memory stays proportional to the header's size (see `parse_header`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]  # C-accelerated, not in typeshed

from swell.core.errors import HeaderError

MAX_HEADER_BYTES = 100 * 1024 * 1024
PREFIX_BYTES = 8
MAX_RANK = 16  # above any real model's tensors (PyTorch allows 64), and it bounds a shape's memory
MAX_DIM = 2**63 - 1  # a dimension, and a shape's extent, must fit a signed 64-bit size
MAX_MEMBERS = 4096  # members of one object: a tensor has 3, __metadata__ a handful

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


def parse_header(raw: bytes | bytearray, file_size: int) -> Header:
    """Validate the JSON header `raw` of a file of `file_size` bytes.

    The JSON is read by `_Reader`, which knows only what a header holds (an object of objects whose
    values are strings and short flat arrays of scalars) and stops at the first thing past those
    bounds, so the memory parsing takes stays a small multiple of `len(raw)` however the header is
    built: each member is checked and kept as a compact `TensorEntry` before the next is read, and no
    list longer than `MAX_RANK` nor object wider than `MAX_MEMBERS` is ever built.
    """
    data_start = PREFIX_BYTES + len(raw)
    try:
        reader = _Reader(raw.decode("utf-8"))
        members = list(_checked_members(reader, data_start))
    except HeaderError:
        raise
    except (ValueError, RecursionError, MemoryError) as exc:  # bad UTF-8, bad strings
        raise HeaderError(f"header is not valid JSON: {exc}") from None
    metadata = next((m for m in members if isinstance(m, dict)), {})
    entries = [m for m in members if isinstance(m, TensorEntry)]
    entries.sort(key=lambda e: (e.begin, e.end))
    _check_coverage(entries, data_start, file_size)
    return Header(data_start, file_size, tuple(entries), metadata)


def _checked_members(reader: _Reader, data_start: int) -> Iterator[TensorEntry | dict[str, str]]:
    """Each member of the top-level object, checked as soon as it is read; names must not repeat."""
    seen: set[str] = set()
    for name, value in reader.members(top=True):
        if name in seen:
            raise HeaderError(f"header names {name!r} twice")
        seen.add(name)
        yield _metadata(value) if name == "__metadata__" else _entry(name, value, data_start)
    reader.end()


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS = {"true": True, "false": False, "null": None}
MAX_DIGITS = 19  # 2**63 has 19 digits: a longer integer is out of bounds, and never converted


class _Reader:
    """Strict JSON, the subset of it a safetensors header uses, with bounds: the top-level object's
    members are yielded one at a time; their values may be objects (of scalars and flat arrays), and
    arrays hold at most MAX_RANK scalars. Anything else is a `HeaderError` at its first character."""

    __slots__ = ("i", "text")

    def __init__(self, text: str) -> None:
        self.text, self.i = text, 0

    def members(self, *, top: bool = False) -> Iterator[tuple[str, object]]:
        """(name, value) per member of the object that begins here."""
        if self._next() != "{":
            raise HeaderError("header must be a JSON object" if top else self._bad("an object"))
        self.i += 1
        if self._next() == "}":
            self.i += 1
            return
        for _ in range(MAX_MEMBERS if not top else len(self.text)):
            name = self._string()
            self._expect(":")
            yield name, self._value(nested=not top)
            if self._next() == "}":
                self.i += 1
                return
            self._expect(",")
        raise HeaderError(f"header holds an object with more than {MAX_MEMBERS} members")

    def end(self) -> None:
        if self._next() != "":
            raise HeaderError(self._bad("the end of the header"))

    def _value(self, *, nested: bool) -> object:
        ch = self._next()
        if ch == "{":
            if nested:
                raise HeaderError("header nests objects deeper than a safetensors header does")
            return _unique_keys(list(self.members()))
        if ch == "[":
            return self._array()
        return self._scalar()

    def _array(self) -> list[object]:
        self.i += 1
        items: list[object] = []
        if self._next() == "]":
            self.i += 1
            return items
        while True:
            if self._next() in ("[", "{"):
                raise HeaderError("header holds arrays or objects inside an array; shapes are flat")
            if len(items) == MAX_RANK:
                raise HeaderError(
                    f"header holds an array of more than {MAX_RANK} items (the most a shape has)"
                )
            items.append(self._scalar())
            if self._next() == "]":
                self.i += 1
                return items
            self._expect(",")

    def _scalar(self) -> object:
        ch = self._next()
        if ch == '"':
            return self._string()
        for word, value in _LITERALS.items():
            if self.text.startswith(word, self.i):
                self.i += len(word)
                return value
        match = _NUMBER.match(self.text, self.i)
        if match is None:
            raise HeaderError(self._bad("a value"))
        self.i = match.end()
        token = match.group()
        if match.group(1) or match.group(2):
            return float(token)
        return int(token) if len(token.lstrip("-")) <= MAX_DIGITS else math.inf

    def _string(self) -> str:
        if self._next() != '"':
            raise HeaderError(self._bad("a name"))
        value, self.i = scanstring(self.text, self.i + 1, True)
        return value

    def _expect(self, ch: str) -> None:
        if self._next() != ch:
            raise HeaderError(self._bad(repr(ch)))
        self.i += 1

    def _next(self) -> str:
        """The next character that is not white space ("" at the end), without taking it."""
        match = _WHITESPACE.match(self.text, self.i)
        self.i = match.end() if match else self.i
        return self.text[self.i : self.i + 1]

    def _bad(self, wanted: str) -> str:
        found = self.text[self.i : self.i + 12]
        return f"header is not valid JSON: expected {wanted} at character {self.i}, found {found!r}"


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
    dims = _shape(name, shape)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise HeaderError(f"tensor {name!r}: data_offsets must be two integers from 0 to 2**63 - 1")
    begin, end = offsets
    if end < begin:
        raise HeaderError(f"tensor {name!r}: data_offsets end before they begin")
    if math.prod(dims) * DTYPES[dtype][0] != end - begin:
        raise HeaderError(f"tensor {name!r}: shape {list(dims)} of {dtype} does not fill {end - begin} bytes")
    return TensorEntry(name, dtype, dims, data_start + begin, data_start + end)


def _shape(name: str, shape: object) -> tuple[int, ...]:
    """A shape of at most MAX_RANK dimensions whose extent (empty dimensions counted as 1, as strides
    are) fits in 63 bits, so that no runtime overflows computing its strides."""
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise HeaderError(f"tensor {name!r}: shape must be a list of integers from 0 to 2**63 - 1")
    if len(shape) > MAX_RANK:
        raise HeaderError(f"tensor {name!r}: rank {len(shape)} exceeds the limit of {MAX_RANK}")
    if math.prod(max(d, 1) for d in shape) > MAX_DIM:
        raise HeaderError(f"tensor {name!r}: shape {shape} spans more than 2**63 - 1 elements")
    return tuple(shape)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DIM


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
