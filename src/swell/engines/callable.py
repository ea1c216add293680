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
    """Import `package.module:attr`; a bad string, a module that fails to import or a missing
    attribute is a ConfigError naming `key`."""
    try:
        return resolve(spec)
    except ValueError as exc:
        raise ConfigError(str(exc), key=key) from None


def resolve(spec: str) -> Any:
    """The object `package.module:attr` names; ValueError saying why when there is none.

    Importing runs the user's module, so any exception it raises (a SyntaxError, a missing dependency,
    its own RuntimeError) is a reason the name does not resolve, reported as one line.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r} is not of the form 'package.module:attr'")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"cannot import {spec!r}: {module_name!r} has no attribute {attr!r}") from None
    return target


def resolve_callable(spec: str) -> UserFunction:
    """`resolve`, and the object must be callable."""
    target = resolve(spec)
    if not callable(target):
        raise ValueError(f"{spec!r} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


class CallableEngine:
    """Runs a plain Python function once per input, sequentially within a leased batch."""

    model: str | None = None

    def __init__(self, function: str, batch: bool = True) -> None:
        self.spec = function
        self.batches = batch
        self._function: UserFunction | None = None

    def load(self) -> dict[str, float]:
        try:
            self._function = resolve_callable(self.spec)
        except ValueError as exc:
            raise ConfigError(str(exc), key="options.function") from None
        return {"fetch": 0.0, "load": 0.0, "warmup": 0.0}

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        """Each input in turn; each result is reported as it is made, so that a batch cut short by its
        deadline keeps (and settles) the jobs that had finished in it."""
        results: list[dict[str, Any] | Exception] = []
        for job_id, item in zip(context.job_ids, inputs, strict=True):
            results.append(self._run_one(item))
            context.report(job_id, results[-1])
        return results

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
