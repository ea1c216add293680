"""Trace readers: the image-serving CSV (`sd_requests_*`) and the Azure LLM CSV (`azure_llm_*`).

Both become one `Trace` of numpy columns, arrivals in seconds from the first request. The format is
recognised from the header, so a trace may live at any path.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

from swell.core.errors import ValidationError

IMAGE_COLUMNS = {"gmt_create", "exec_time_seconds", "checkpoint_model_version_id"}
LLM_COLUMNS = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}


@dataclass(frozen=True, slots=True)
class LlmRates:
    """How an LLM replica spends its time: prefill and per-sequence decode speed, batch slots."""

    prefill_tokens_per_s: float = 8000.0
    decode_tokens_per_s: float = 40.0
    batch: int = 16


@dataclass(frozen=True)
class Trace:
    """Jobs in arrival order. `service` is the GPU time on a replica that holds the model; `units`
    is what is known at arrival, turned into seconds by a learned rate: steps x images for image
    jobs; for LLM requests their tokens priced at the prefill and decode rates (token-seconds)."""

    name: str
    kind: Literal["image", "llm"]
    arrival: np.ndarray  # float64 seconds from the first arrival, sorted
    service: np.ndarray  # float64 seconds
    units: np.ndarray  # float64
    model: np.ndarray  # int32 index into `models`
    models: tuple[str, ...]
    priority: np.ndarray  # int8: 0 high, 1 normal, 2 low
    slots: int = 1  # jobs one replica runs at once (LLM batching)

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def span(self) -> float:
        return float(self.arrival[-1] - self.arrival[0]) if len(self) else 0.0

    def head(self, n: int) -> Trace:
        return self.slice(0, n)

    def slice(self, start: int, stop: int) -> Trace:
        arrival = self.arrival[start:stop]
        arrival = arrival - (arrival[0] if len(arrival) else 0.0)
        return replace(
            self,
            arrival=arrival,
            service=self.service[start:stop],
            units=self.units[start:stop],
            model=self.model[start:stop],
            priority=self.priority[start:stop],
        )

    def scaled(self, speed: float) -> Trace:
        """Arrivals `speed` times faster (2.0: the same jobs in half the time)."""
        if speed <= 0:
            raise ValidationError("speed must be positive", field="speed")
        return replace(self, arrival=self.arrival / speed)


def read_trace(path: str | Path, *, llm: LlmRates | None = None) -> Trace:
    """Read either CSV format from any path."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = set(reader.fieldnames or ())
            rows = list(reader)
    except FileNotFoundError:
        raise ValidationError(f"no trace at {path}", field="trace") from None
    if columns >= IMAGE_COLUMNS:
        return _image_trace(path.stem, rows)
    if columns >= LLM_COLUMNS:
        return _llm_trace(path.stem, rows, llm or LlmRates())
    raise ValidationError(
        f"{path} is neither an image trace ({', '.join(sorted(IMAGE_COLUMNS))}) nor an LLM trace "
        f"({', '.join(sorted(LLM_COLUMNS))})",
        field="trace",
    )


def _seconds(stamp: str) -> float:
    """ISO time with up to 7 fractional digits (the Azure trace has 7)."""
    whole, _, frac = stamp.strip().partition(".")
    t = datetime.fromisoformat(whole).timestamp()
    return t + (float("0." + frac) if frac else 0.0)


def _number(value: str | None, default: float) -> float:
    try:
        x = float(value) if value not in (None, "") else default
    except ValueError:
        return default
    return default if math.isnan(x) else x


def _image_trace(name: str, rows: list[dict[str, str]]) -> Trace:
    arrival = _relative([_seconds(r["gmt_create"]) for r in rows])
    service = np.array([max(0.0, _number(r["exec_time_seconds"], 0.0)) for r in rows])
    units = np.array(
        [
            _number(r.get("num_inference_steps"), 30.0) * _number(r.get("num_images_per_prompt"), 1.0)
            for r in rows
        ]
    )
    models, codes = np.unique(
        [r["checkpoint_model_version_id"] or "default" for r in rows], return_inverse=True
    )
    return _sorted(name, "image", arrival, service, units, codes, models, slots=1)


def _llm_trace(name: str, rows: list[dict[str, str]], rates: LlmRates) -> Trace:
    arrival = _relative([_seconds(r["TIMESTAMP"]) for r in rows])
    prompt = np.array([_number(r["ContextTokens"], 0.0) for r in rows])
    output = np.array([_number(r["GeneratedTokens"], 0.0) for r in rows])
    service = prompt / rates.prefill_tokens_per_s + output / rates.decode_tokens_per_s
    codes = np.zeros(len(rows), dtype=np.int64)
    return _sorted(name, "llm", arrival, service, service.copy(), codes, np.array(["llm"]), slots=rates.batch)


def _relative(times: list[float]) -> np.ndarray:
    t = np.asarray(times, dtype=np.float64)
    return t - t.min() if len(t) else t


def _sorted(
    name: str,
    kind: Literal["image", "llm"],
    arrival: np.ndarray,
    service: np.ndarray,
    units: np.ndarray,
    codes: np.ndarray,
    models: np.ndarray,
    *,
    slots: int,
) -> Trace:
    order = np.argsort(arrival, kind="stable")
    return Trace(
        name=name,
        kind=kind,
        arrival=arrival[order],
        service=service[order],
        units=units[order],
        model=codes[order].astype(np.int32),
        models=tuple(str(m) for m in models),
        priority=np.ones(len(arrival), dtype=np.int8),
        slots=slots,
    )


def synthetic(
    arrival: list[float] | np.ndarray,
    service: list[float] | np.ndarray,
    models: list[str] | None = None,
    *,
    priority: list[int] | None = None,
    name: str = "synthetic",
    slots: int = 1,
    units: list[float] | np.ndarray | None = None,
) -> Trace:
    """A hand-made trace (tests, examples): units equal service seconds unless given."""
    arrival = np.asarray(arrival, dtype=np.float64)
    service = np.asarray(service, dtype=np.float64)
    work = service.copy() if units is None else np.asarray(units, dtype=np.float64)
    names = models or ["default"] * len(arrival)
    table, codes = np.unique(names, return_inverse=True)
    trace = _sorted(name, "image", arrival, service, work, codes, table, slots=slots)
    if priority is not None:
        order = np.argsort(arrival, kind="stable")
        trace = replace(trace, priority=np.asarray(priority, dtype=np.int8)[order])
    return trace
