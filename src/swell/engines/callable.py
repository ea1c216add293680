"""The `callable` engine: a user function `module:function` taking the input dict."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

from swell.core.errors import ConfigError, EngineError
from swell.engines.base import RunContext

UserFunction = Callable[[dict[str, Any]], Any]


def import_attr(spec: str, *, key: str) -> Any:
    """Import `package.module:attr`; a bad string or a missing attribute is a ConfigError naming `key`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{spec!r} is not of the form 'package.module:attr'", key=key)
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {spec!r}: {exc}", key=key) from exc
    return target


class CallableEngine:
    """Runs a plain Python function once per input, sequentially within a leased batch."""

    model: str | None = None

    def __init__(self, function: str, batch: bool = True) -> None:
        self.spec = function
        self.batches = batch
        self._function: UserFunction | None = None

    def load(self) -> dict[str, float]:
        self._function = import_attr(self.spec, key="engine.options.function")
        if not callable(self._function):
            raise ConfigError(f"{self.spec!r} is not callable", key="engine.options.function")
        return {"fetch": 0.0, "load": 0.0, "warmup": 0.0}

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        return [self._run_one(item) for item in inputs]

    def unload(self) -> None:
        self._function = None

    def _run_one(self, item: dict[str, Any]) -> dict[str, Any] | Exception:
        if self._function is None:
            raise EngineError("the callable engine is not loaded")
        try:
            result = self._function(item)
        except Exception as exc:
            return exc
        if not isinstance(result, dict):
            return EngineError(f"{self.spec} returned {type(result).__name__}, not a dict")
        try:
            json.dumps(result)
        except (TypeError, ValueError) as exc:
            return EngineError(f"{self.spec} returned a result that is not JSON: {exc}")
        return result

    def __repr__(self) -> str:
        return f"CallableEngine({self.spec!r}, batches={self.batches})"
