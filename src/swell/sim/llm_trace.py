"""The Azure LLM inference trace format, read for the LLM simulator (`swell.sim.llm`).

`AzurePublicDataset`'s LLM traces (the 2023 code and conversation hours, and the 2024 week-long
files) are CSVs with three columns: `TIMESTAMP` (ISO date and time, any number of fractional
digits, optionally a UTC offset: `2023-11-16 18:17:03.9799600`, `2024-05-10 00:00:00.009930+00:00`),
`ContextTokens` (prompt tokens) and `GeneratedTokens` (tokens the model generated). Other columns
are ignored. Each error names the column and the line, so a broken file says where it broke.

Unlike `swell.sim.trace` (which folds tokens into one service time for the image simulator), this
keeps the tokens: the LLM simulator needs prompt and output apart, since prefill and decode run
at different speeds and share a replica's batch.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from swell.core.errors import ValidationError

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_STAMP = re.compile(r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)(?:\.(\d+))?\s*(Z|[+-]\d\d:?\d\d)?")


@dataclass(frozen=True)
class LlmTrace:
    """Requests in arrival order: when each arrived (seconds from the first), its prompt tokens and
    the tokens it generated (at least one: a completion returns a token)."""

    name: str
    arrival: np.ndarray  # float64 seconds from the first arrival, sorted
    prompt: np.ndarray  # int64 prompt (context) tokens
    output: np.ndarray  # int64 generated tokens, >= 1

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def span(self) -> float:
        return float(self.arrival[-1] - self.arrival[0]) if len(self) else 0.0

    def head(self, n: int) -> LlmTrace:
        return self.slice(0, n)

    def slice(self, start: int, stop: int) -> LlmTrace:
        arrival = self.arrival[start:stop]
        arrival = arrival - (arrival[0] if len(arrival) else 0.0)
        return replace(self, arrival=arrival, prompt=self.prompt[start:stop], output=self.output[start:stop])

    def scaled(self, speed: float) -> LlmTrace:
        """Arrivals `speed` times faster (2.0: the same requests in half the time)."""
        if speed <= 0:
            raise ValidationError("speed must be positive", field="speed")
        return replace(self, arrival=self.arrival / speed)


def read_llm_trace(path: str | Path) -> LlmTrace:
    """Read an Azure LLM trace CSV from any path; rows are sorted by time (stable)."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            _check_columns(path, reader.fieldnames)
            rows = [_row(path, line, row) for line, row in enumerate(reader, start=2)]
    except FileNotFoundError:
        raise ValidationError(f"no trace at {path}", field="trace") from None
    except UnicodeDecodeError:
        raise ValidationError(f"{path} is not a text CSV", field="trace") from None
    if not rows:
        raise ValidationError(f"{path} has a header but no requests", field="trace")
    stamps, prompt, output = (np.array(c) for c in zip(*rows, strict=True))
    return _sorted(path.stem, stamps, prompt, output)


def synthetic_llm(
    arrival: list[float] | np.ndarray,
    prompt: list[int] | np.ndarray,
    output: list[int] | np.ndarray,
    *,
    name: str = "synthetic-llm",
) -> LlmTrace:
    """A hand-made LLM trace (tests, examples), validated like a file."""
    a = np.asarray(arrival, dtype=np.float64)
    p = np.asarray(prompt, dtype=np.int64)
    o = np.asarray(output, dtype=np.int64)
    if not len(a) == len(p) == len(o):
        raise ValidationError("arrival, prompt and output must have one entry per request", field="trace")
    if len(a) and (p.min() < 0 or o.min() < 1):
        raise ValidationError("prompt tokens must be >= 0 and output tokens >= 1", field="trace")
    return _sorted(name, a, p, o)


def _check_columns(path: Path, fieldnames: object) -> None:
    names = set(fieldnames or ())  # type: ignore[call-overload]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        found = ", ".join(sorted(names)) or "none (an empty file)"
        raise ValidationError(
            f"{path} lacks column {', '.join(missing)} of the Azure LLM trace format "
            f"({', '.join(COLUMNS)}); found: {found}",
            field=missing[0],
        )


def _row(path: Path, line: int, row: dict[str, str]) -> tuple[float, int, int]:
    return (
        _seconds(path, line, row.get("TIMESTAMP")),
        _tokens(path, line, row, "ContextTokens", low=0),
        max(1, _tokens(path, line, row, "GeneratedTokens", low=0)),
    )


def _seconds(path: Path, line: int, value: str | None) -> float:
    """POSIX seconds of an ISO stamp; fractions of any length are kept (Azure's have 7 digits,
    more than `datetime` parses)."""
    m = _STAMP.fullmatch((value or "").strip())
    if m is None:
        raise ValidationError(
            f"{path}:{line}: TIMESTAMP {value!r} is not an ISO date and time", field="TIMESTAMP"
        )
    whole, frac, zone = m.groups()
    if zone:
        zone = "+00:00" if zone == "Z" else zone
    try:
        t = datetime.fromisoformat(whole + (zone or "")).timestamp()
    except ValueError:
        raise ValidationError(
            f"{path}:{line}: TIMESTAMP {value!r} is not a valid time", field="TIMESTAMP"
        ) from None
    return t + (float("0." + frac) if frac else 0.0)


def _tokens(path: Path, line: int, row: dict[str, str], column: str, *, low: int) -> int:
    value = (row.get(column) or "").strip()
    try:
        n = float(value)
    except ValueError:
        n = float("nan")
    if not n == n or n < low or n != int(n):  # NaN, negative or fractional
        raise ValidationError(
            f"{path}:{line}: {column} {value!r} is not a whole number of tokens >= {low}", field=column
        )
    return int(n)


def _sorted(name: str, stamps: np.ndarray, prompt: np.ndarray, output: np.ndarray) -> LlmTrace:
    order = np.argsort(stamps, kind="stable")
    arrival = stamps[order].astype(np.float64)
    return LlmTrace(
        name=name,
        arrival=arrival - (arrival[0] if len(arrival) else 0.0),
        prompt=prompt[order].astype(np.int64),
        output=output[order].astype(np.int64),
    )
