"""Engines and functions that use the whole seam: progress, deltas, previews, cancels, result files.

Named by import string in worker and registry tests (`tests.engines.progressive:count`,
`tests.engines.progressive:SPEC`), in-process and in real worker processes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, field_validator

from swell.core.errors import ValidationError
from swell.engines.base import JobCancelled, LoadTimings, RunContext
from swell.engines.callable import Job
from swell.engines.spec import EngineEnv, EngineSpec, Input, Options

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16  # enough of a PNG for the worker to know it by its magic


def count(item: dict[str, Any], job: Job) -> dict[str, Any]:
    """Count `steps` steps of `sleep` seconds: progress and a delta per step, a preview every
    `preview_every` steps, stop at the next step once cancelled; write the count as a result file."""
    steps, pause = int(item.get("steps", 5)), float(item.get("sleep", 0.0))
    for step in range(steps):
        if job.cancelled():
            return {"stopped_at": step}
        time.sleep(pause)
        job.delta(f"{step} ")
        every = int(item.get("preview_every", 0))
        preview = PNG + bytes([step]) if every and (step + 1) % every == 0 else None
        job.progress((step + 1) / steps, message=f"step {step + 1}/{steps}", preview=preview)
    name = job.put("count.txt", f"{steps}".encode(), "text/plain")
    return {"steps": steps, "file": name}


class Lora(Input):
    name: str
    weight: Annotated[float, Field(ge=-2, le=2)] = 1.0


class PaintInput(Input):
    prompt: str
    steps: Annotated[int, Field(ge=1, le=50)] = 4
    images: Annotated[int, Field(ge=1, le=4)] = 1
    width: int = 64
    loras: list[Lora] = Field(default_factory=list)

    @field_validator("width")
    @classmethod
    def _multiple_of_8(cls, width: int) -> int:
        if width % 8:
            raise ValueError("must be a multiple of 8")
        return width


class PaintOptions(Options):
    max_width: Annotated[int, Field(ge=8)] = 1024
    batch: bool = True
    delay: float = 0.0  # seconds per step


class Painter:
    """Records the size and keys of every call; "paints" by writing one PNG-ish file per image."""

    model: str | None = "painter"

    def __init__(self, options: PaintOptions, env: EngineEnv) -> None:
        self.options, self.env = options, env
        self.batches = options.batch
        self.calls: list[list[int]] = []

    def load(self) -> dict[str, float]:
        return {"fetch": 0.5, "load": 0.25}  # a user engine may still answer a dict

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        self.calls.append([item.get("width", 64) for item in inputs])
        results: list[dict[str, Any] | Exception] = []
        for job_id, item in zip(context.job_ids, inputs, strict=True):
            results.append(self._paint(job_id, item, context))
        return results

    def _paint(self, job_id: str, item: dict[str, Any], context: RunContext) -> dict[str, Any] | Exception:
        steps = int(item.get("steps", 4))
        for step in range(steps):
            if context.cancelled(job_id):
                return JobCancelled(f"stopped at step {step}")
            time.sleep(self.options.delay)
            context.progress(job_id, (step + 1) / steps)
        files = [
            context.results.put(job_id, f"{i}.png", PNG, "image/png") for i in range(item.get("images", 1))
        ]
        return {"images": [{"file": f} for f in files], "device": self.env.device}

    def unload(self) -> None:
        return None


def check(parsed: PaintInput, options: PaintOptions) -> None:
    if parsed.width > options.max_width:
        raise ValidationError(f"at most {options.max_width}", field="input.width")


def units(payload: Mapping[str, Any]) -> dict[str, float]:
    return {"steps": float(payload.get("steps", 4)), "images": float(payload.get("images", 1))}


SPEC = EngineSpec(
    name="painter",
    factory="tests.engines.progressive:Painter",
    Options=PaintOptions,
    Input=PaintInput,
    batches=lambda options: options.batch,
    units=units,
    batch_key=lambda payload: (payload.get("width", 64), payload.get("steps", 4)),
    check=check,
)

MISSING = EngineSpec(name="missing", factory="swell_no_such_package.engine:Engine", extra="diffusers")

NOT_A_SPEC = 3


def load_timings_of(value: Any) -> LoadTimings:
    return LoadTimings.of(value)
