"""What is known about an engine without importing it: a light spec beside the heavy engine.

An `EngineSpec` names an engine's typed options (checked when swell.yaml loads; an error names
`options.KEY`, which swell.core.config turns into `services[NAME].options.KEY`), the typed input of
one job (checked by the gateway at submit; an error names `input.FIELD`), whether it batches, the
units of work a job carries (what the brain reads instead of guessing from input keys), which jobs
may share one engine call (`batch_key`), the extra that installs its dependencies, and the import
string of its factory. A spec module imports pydantic and Swell's light modules only, never torch,
diffusers or transformers: config checks and the gateway import it; the factory is imported only in
the worker, by `EngineSpec.load_factory`, and called as `factory(options, env)`.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
from pydantic import BaseModel, ConfigDict

from swell.core.errors import ConfigError, MissingExtra, ValidationError
from swell.data.config import DatasetConfig

if TYPE_CHECKING:
    from swell.engines.base import Engine
    from swell.engines.results import ResultStore

Units = dict[str, float]
DEVICE_PATTERN = r"^(cpu|mps|xpu|cuda(:[0-9]+)?)$"


class Options(BaseModel):
    """The base of every engine's options: unknown keys and wrong types are refused, never coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Input(BaseModel):
    """The base of every engine's job input: unknown fields and wrong JSON types are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AnyInput(BaseModel):
    """A job input with no rule beyond being a JSON object (the `callable` engine's)."""

    model_config = ConfigDict(extra="allow", frozen=True)


@dataclass(frozen=True)
class Problem:
    """Why a service's engine, its options or a job's input cannot work; `key` is relative to the
    service (`engine`, `options.device`) or to the request (`input.texts[1]`)."""

    key: str
    message: str

    def error(self) -> ConfigError:
        return ConfigError(self.message, key=self.key)

    def invalid(self) -> ValidationError:
        return ValidationError(self.message, field=self.key)


@dataclass(frozen=True)
class EngineEnv:
    """What a factory gets besides its options: where the node's cache lives, swell.yaml's datasets
    (what an option `dataset: NAME` refers to), the store result files go to, and the device the
    cluster placed this worker on (None: the engine decides)."""

    data_dir: Path
    datasets: Mapping[str, DatasetConfig]
    results: ResultStore
    device: str | None = None

    def dataset(self, name: str, *, key: str = "options.dataset") -> DatasetConfig:
        """The dataset `name`; a ConfigError at `key` naming the known ones when there is none."""
        return dataset_named(self.datasets, name, key=key)


def dataset_named(
    datasets: Mapping[str, DatasetConfig], name: str, *, key: str = "options.dataset"
) -> DatasetConfig:
    """`datasets[name]`; a ConfigError at `key` naming the known ones when there is none (the one
    check engines make of an option `dataset: NAME`)."""
    if name not in datasets:
        known = ", ".join(sorted(datasets)) or "none"
        raise ConfigError(f"no dataset named {name!r} (known: {known})", key=key)
    return datasets[name]


OptionsModel = Options  # the names the spec's fields are annotated with (its fields shadow them)
InputModel = BaseModel


def one_unit(payload: Mapping[str, Any]) -> Units:
    """The units of an engine that knows nothing finer: one job."""
    return {"jobs": 1.0}


@dataclass(frozen=True)
class EngineSpec:
    """One engine, described without importing it (see the module docstring).

    `batches` is a bool or a function of the parsed options (`callable` batches unless told not to).
    `units(input)` gets a job's raw input (already valid) and returns its work units, e.g.
    `{"steps": 30, "images": 2}` or `{"tokens": 256}`; their product is the job's work. `batch_key(input)`,
    when set, makes the worker split a leased batch into calls of jobs with equal keys (a pipeline
    called once per shape). `check(input, options)`, when set, cross-checks a parsed input against the
    service's parsed options at submit (an image size over the service's limit, say).
    """

    name: str
    factory: str  # "package.module:attr", imported only to build the engine
    Options: type[OptionsModel] = OptionsModel
    Input: type[InputModel] = AnyInput
    batches: bool | Callable[[Any], bool] = True
    units: Callable[[Mapping[str, Any]], Units] = one_unit
    extra: str | None = None  # `pip install 'swell[EXTRA]'` brings its dependencies
    batch_key: Callable[[Mapping[str, Any]], Hashable] | None = None
    check: Callable[[Any, Any], None] | None = None
    description: str = field(default="", compare=False)

    def options_problem(self, options: Any) -> Problem | None:
        """The first thing wrong with `options` (unknown, missing or mistyped), or None."""
        return options_problem(self.Options, options, self.name)

    def parse_options(self, options: Any) -> Any:
        """`options` as the spec's `Options` model; a ConfigError naming `options.KEY` when they do
        not fit."""
        if (problem := self.options_problem(options)) is not None:
            raise problem.error()
        return self.Options.model_validate(options)

    def parse_input(self, payload: Any) -> Any:
        """One job's input as the spec's `Input` model; a ValidationError naming `input.FIELD`."""
        if not isinstance(payload, dict):
            raise ValidationError("input must be a JSON object", field="input")
        try:
            return self.Input.model_validate(payload)
        except pydantic.ValidationError as exc:
            raise pydantic_problem(exc.errors()[0], self.Input, "input", self.name).invalid() from None

    def batches_for(self, options: Any) -> bool:
        """Whether a worker may lease several jobs at once for an engine with these parsed options."""
        return self.batches(options) if callable(self.batches) else bool(self.batches)

    def load_factory(self) -> Callable[[Any, EngineEnv], Engine]:
        """The factory, imported now; a missing dependency says which extra installs it."""
        try:
            factory: Callable[[Any, EngineEnv], Engine] = resolve(self.factory)
        except ValueError as exc:
            if self.extra is not None and isinstance(exc.__cause__, ImportError):
                raise MissingExtra(f"the {self.name} engine ({exc})", self.extra) from exc
            hint = f"; pip install 'swell[{self.extra}]'" if self.extra else ""
            raise ConfigError(f"{exc}{hint}", key="engine") from None
        return factory


def resolve(spec: str) -> Any:
    """The object `package.module:attr` names; ValueError saying why when there is none.

    Importing runs the user's module, so any exception it raises (a SyntaxError, a missing dependency,
    its own RuntimeError) is a reason the name does not resolve, reported as one line; the import's
    exception is the ValueError's `__cause__`.
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


def resolve_callable(spec: str) -> Callable[..., Any]:
    """`resolve`, and the object must be callable."""
    target = resolve(spec)
    if not callable(target):
        raise ValueError(f"{spec!r} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def total_units(units: Mapping[str, float]) -> float:
    """A job's work as one number: the product of its units (steps x images; tokens), 1 for none.
    A unit that is not a positive finite number counts as 1."""
    product = 1.0
    for value in units.values():
        if isinstance(value, int | float) and math.isfinite(value) and value > 0:
            product *= float(value)
    return product


def options_problem(model: type[BaseModel], options: Any, engine: str) -> Problem | None:
    """The first thing wrong with `options` for the options model `model` of `engine`, or None."""
    if not isinstance(options, dict):
        return Problem("options", "must be a mapping of option names to values")
    try:
        model.model_validate(options)
    except pydantic.ValidationError as exc:
        return pydantic_problem(exc.errors()[0], model, "options", engine)
    return None


def pydantic_problem(error: Any, model: type[BaseModel], prefix: str, engine: str) -> Problem:
    """One pydantic error as a Problem keyed `PREFIX.a.b[0]`, with a message a user can act on."""
    loc = [str(part) if isinstance(part, str) else f"[{part}]" for part in error["loc"]]
    key = re.sub(r"\.\[", "[", ".".join([prefix, *loc]))
    what = "option" if prefix == "options" else "field"
    if error["type"] == "extra_forbidden":
        known = f" (known: {', '.join(sorted(model.model_fields))})" if len(loc) == 1 else ""
        return Problem(key, f"unknown {what} {loc[-1]!r} for engine {engine!r}{known}")
    if error["type"] == "missing":
        return Problem(key, f"engine {engine!r} needs the {what} {loc[-1]!r}")
    return Problem(key, str(error["msg"]).removeprefix("Value error, "))


def device_option(device: str | None) -> str | None:
    """A validator body for a `device` option: cpu, cuda, cuda:N, mps or xpu."""
    if device is not None and not re.fullmatch(DEVICE_PATTERN, device):
        raise ValueError(f"unknown device {device!r} (cpu, cuda, cuda:N, mps or xpu)")
    return device
