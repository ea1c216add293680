"""Engines by name: a table of import strings to light specs, or any `package.module:attr`.

`ENGINES` maps a built-in name to the import string of its `EngineSpec` (swell.engines.spec), which
imports no torch; the heavy engine is imported only by `create_engine`, in the worker, through the
spec's factory. A config may also name `package.module:attr`, which is either an `EngineSpec` (a
user engine described like a built-in) or, as before specs, a class or factory called with the
options as keywords; when such a class carries an `Options` pydantic model, its options are checked
against it.

Problems are reported with a key relative to the service (`engine`, `options.device`), which
swell.core.config turns into `services[NAME].options.device`; a job's input errors name `input.FIELD`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from swell.core.errors import ConfigError, ValidationError
from swell.data.config import DatasetConfig
from swell.engines.base import Engine
from swell.engines.results import ResultStore, results_from_env
from swell.engines.spec import EngineEnv, EngineSpec, Options, Problem, options_problem, resolve, total_units
from swell.engines.spec import Units as Units

DEVICE_ENV = "SWELL_DEVICE"  # the device the cluster placed a worker on (cuda:1), when it says

ENGINES: dict[str, str] = {
    "callable": "swell.engines.callable:SPEC",
    "embeddings": "swell.engines.embeddings:SPEC",
    "diffusers": "swell.engines.diffusers.spec:SPEC",
    "transformers": "swell.engines.transformers.spec:SPEC",
    "http": "swell.engines.http.spec:SPEC",
}

__all__ = [
    "ENGINES",
    "EngineSpec",
    "Options",
    "Problem",
    "batch_key_of",
    "create_engine",
    "engine_problem",
    "engine_spec",
    "job_units",
    "validate_input",
    "work_units",
]


class Legacy:
    """A `module:attr` engine without a spec: a class or factory called with the options."""

    def __init__(self, factory: Callable[..., Engine]) -> None:
        self.factory = factory
        model = getattr(factory, "Options", None)
        self.options = model if isinstance(model, type) and issubclass(model, BaseModel) else None


def engine_spec(name: str) -> EngineSpec | None:
    """The spec of engine `name`; None for a `module:attr` class or factory that has none. A
    ConfigError at `engine` when the name is unknown or does not import."""
    found = _lookup(name)
    return found if isinstance(found, EngineSpec) else None


def engine_problem(name: str, options: dict[str, Any]) -> Problem | None:
    """The first thing wrong with engine `name` and its `options`, or None: an unknown name, a
    `module:attr` that does not import, an unknown, missing or mistyped option, a function that
    does not import. Imports only spec modules for built-ins (no torch)."""
    try:
        found = _find(name)
    except ValueError as exc:
        return Problem("engine", str(exc))
    if isinstance(found, EngineSpec):
        return found.options_problem(options)
    return options_problem(found.options, options, name) if found.options is not None else None


def create_engine(
    name: str,
    options: dict[str, Any],
    *,
    data_dir: Path,
    datasets: Mapping[str, DatasetConfig] | None = None,
    results: ResultStore | None = None,
    device: str | None = None,
) -> Engine:
    """Build (not load) the engine `name` with its options; a bad name or option is a ConfigError
    naming it (`engine`, `options.NAME`), a missing dependency a MissingExtra naming the extra.

    `datasets` (swell.yaml's section) is what an option `dataset: NAME` refers to; `data_dir` holds the
    node cache such a dataset is fetched through. `results` defaults to the store `SWELL_RESULTS_URL`
    names (else files under `data_dir`), `device` to `SWELL_DEVICE`.
    """
    if (problem := engine_problem(name, options)) is not None:
        raise problem.error()
    found = _lookup(name)
    if not isinstance(found, EngineSpec):
        return found.factory(**options)
    env = EngineEnv(
        data_dir=data_dir,
        datasets=dict(datasets or {}),
        results=results if results is not None else results_from_env(data_dir),
        device=device or os.environ.get(DEVICE_ENV) or None,
    )
    return found.load_factory()(found.parse_options(options), env)


def validate_input(engine: str, options: dict[str, Any], payload: dict[str, Any]) -> None:
    """Cheap submit-time check of a job's input for `engine` through its spec's `Input` (and `check`,
    against the parsed options); raises ValidationError naming the field."""
    if not isinstance(payload, dict):
        raise ValidationError("input must be a JSON object", field="input")
    spec = engine_spec(engine)
    if spec is None:
        return
    parsed = spec.parse_input(payload)
    if spec.check is not None:
        spec.check(parsed, spec.parse_options(options))


def job_units(engine: str, payload: Mapping[str, Any]) -> Units:
    """The work units a job of `engine` carries (`{"steps": 30, "images": 2}`), `{"jobs": 1}` for an
    engine without a spec; never raises (a spec whose `units` fails on this input counts one job)."""
    try:
        spec = engine_spec(engine)
        return dict(spec.units(payload)) if spec is not None else {"jobs": 1.0}
    except Exception:
        return {"jobs": 1.0}


def work_units(engine: str, payload: Mapping[str, Any]) -> float:
    """A job's work as one number (the product of its units): what the brain's rate is learned on."""
    return total_units(job_units(engine, payload))


def batch_key_of(engine: str) -> Callable[[Mapping[str, Any]], Hashable] | None:
    """The function whose equal values mark jobs that may share one engine call, when the spec has one."""
    spec = engine_spec(engine)
    return spec.batch_key if spec is not None else None


def _lookup(name: str) -> EngineSpec | Legacy:
    """`_find`, its failure a ConfigError at `engine`."""
    try:
        return _find(name)
    except ValueError as exc:
        raise ConfigError(str(exc), key="engine") from None


@functools.lru_cache(maxsize=256)
def _find(name: str) -> EngineSpec | Legacy:
    """A built-in's spec, or what `module:attr` names; ValueError saying why when neither (failures
    are not cached: a module fixed later imports then)."""
    target = ENGINES.get(name)
    if target is None and ":" not in name:
        known = ", ".join(ENGINES)
        raise ValueError(f"unknown engine {name!r} (built in: {known}; or 'package.module:attr')")
    found = resolve(target or name)
    if isinstance(found, EngineSpec):
        return found
    if target is not None:
        raise ValueError(f"{target} is a {type(found).__name__}, not an EngineSpec")
    if not callable(found):
        raise ValueError(
            f"{name!r} is a {type(found).__name__}, not a callable (engine class or factory) or EngineSpec"
        )
    return Legacy(found)
