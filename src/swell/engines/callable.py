"""The `callable` engine: a user function `module:function` taking the input dict.

The function may take a second argument, a `Job` handle (`progress`, `delta`, `cancelled`, `results`
for its own job), when it is declared with one: `def run(item, job): ...`. A plain one-argument
function is called with the input alone.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import field_validator

from swell.core.errors import ConfigError, EngineError
from swell.engines.base import JobCancelled, LoadTimings, RunContext
from swell.engines.results import ResultStore
from swell.engines.spec import EngineEnv, EngineSpec, Options, resolve, resolve_callable

UserFunction = Callable[..., Any]

__all__ = ["SPEC", "CallableEngine", "CallableOptions", "Job", "import_attr", "resolve", "resolve_callable"]


class CallableOptions(Options):
    function: str  # "package.module:function", imported when the config is checked
    batch: bool = True  # False: the worker leases one job at a time

    @field_validator("function")
    @classmethod
    def _importable(cls, spec: str) -> str:
        resolve_callable(spec)
        return spec


def import_attr(spec: str, *, key: str) -> Any:
    """Import `package.module:attr`; a bad string, a module that fails to import or a missing
    attribute is a ConfigError naming `key`."""
    try:
        return resolve(spec)
    except ValueError as exc:
        raise ConfigError(str(exc), key=key) from None


@dataclass(frozen=True)
class Job:
    """One job's view of its call, handed to a two-argument user function."""

    id: str
    context: RunContext

    def progress(self, fraction: float, *, preview: bytes | None = None, message: str | None = None) -> None:
        self.context.progress(self.id, fraction, preview=preview, message=message)

    def delta(self, text: str) -> None:
        self.context.delta(self.id, text)

    def cancelled(self) -> bool:
        return self.context.cancelled(self.id)

    @property
    def results(self) -> ResultStore:
        return self.context.results

    def put(self, name: str, data: bytes, content_type: str) -> str:
        """Store a result file of this job; the name to put in its result."""
        return self.context.results.put(self.id, name, data, content_type)


class CallableEngine:
    """Runs a plain Python function once per input, sequentially within a leased batch."""

    model: str | None = None

    def __init__(self, function: str, batch: bool = True) -> None:
        self.spec = function
        self.batches = batch
        self._function: UserFunction | None = None
        self._takes_job = False

    def load(self) -> LoadTimings:
        try:
            self._function = resolve_callable(self.spec)
        except ValueError as exc:
            raise ConfigError(str(exc), key="options.function") from None
        self._takes_job = _takes_two(self._function)
        return LoadTimings()

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        """Each input in turn; each result is reported as it is made, so that a batch cut short by its
        deadline keeps (and settles) the jobs that had finished in it. A job cancelled before its turn
        is not run."""
        results: list[dict[str, Any] | Exception] = []
        for job_id, item in zip(context.job_ids, inputs, strict=True):
            if context.cancelled(job_id):
                results.append(JobCancelled("cancelled before it ran"))
            else:
                results.append(self._run_one(item, Job(job_id, context)))
            context.report(job_id, results[-1])
        return results

    def unload(self) -> None:
        self._function = None

    def _run_one(self, item: dict[str, Any], job: Job) -> dict[str, Any] | Exception:
        if self._function is None:
            raise EngineError("the callable engine is not loaded")
        try:
            result = self._function(item, job) if self._takes_job else self._function(item)
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


def _takes_two(function: UserFunction) -> bool:
    """Whether `function` accepts a second positional argument (the Job handle)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: the input alone
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return False
    return len(positional) >= 2 and all(p.default is p.empty for p in positional[:2])


def build(options: CallableOptions, env: EngineEnv) -> CallableEngine:
    """The spec's factory."""
    return CallableEngine(options.function, options.batch)


SPEC = EngineSpec(
    name="callable",
    factory="swell.engines.callable:build",
    Options=CallableOptions,
    batches=lambda options: options.batch,
    description="a Python function `module:function` run once per input",
)
