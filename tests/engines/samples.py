"""Engines and functions the registry, config and supervisor tests import by `module:attr`."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict

from swell.engines.base import RunContext

NOT_CALLABLE = 42


def shout(item: dict[str, Any]) -> dict[str, Any]:
    return {"text": str(item.get("text", "")).upper()}


def environment(item: dict[str, Any]) -> dict[str, Any]:
    """The names of the variables the worker process runs with."""
    return {"keys": sorted(os.environ)}


class UpperOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    suffix: str = ""


class Upper:
    """A custom engine that declares its options: `tests.engines.samples:Upper`."""

    Options = UpperOptions
    batches = True
    model: str | None = None

    def __init__(self, suffix: str = "") -> None:
        self.suffix = suffix

    def load(self) -> dict[str, float]:
        return {"fetch": 0.0, "load": 0.0, "warmup": 0.0}

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        return [{"text": str(item.get("text", "")).upper() + self.suffix} for item in inputs]

    def unload(self) -> None:
        return None


class Broken(Upper):
    """An engine that imports and builds but never loads (weights that are not there)."""

    def load(self) -> dict[str, float]:
        raise RuntimeError("the weights are missing")
