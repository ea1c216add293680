"""Engines by name: a table of built-ins, or any `package.module:attr` class or factory.

Each built-in is a row of `ENGINES`: a small typed options model (pydantic, extra="forbid", strict),
the import string of its factory and the extra that installs its dependencies. Checking a service's
options (`engine_problem`, run when swell.yaml loads) needs only the model, so it imports no torch; the
factory is imported only by `create_engine`, in the worker. A `module:attr` engine is imported when
checked; when it carries an `Options` pydantic model, its options are checked against it too.

Problems are reported with a key relative to the service (`engine`, `options.device`), which
swell.core.config turns into `services[NAME].options.device`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from swell.core.errors import ConfigError, ValidationError
from swell.data.config import DatasetConfig
from swell.engines.base import Engine
from swell.engines.callable import resolve, resolve_callable

MAX_TEXTS = 1024
MAX_TEXT_CHARS = 100_000
DEVICE_PATTERN = r"^(cpu|mps|xpu|cuda(:[0-9]+)?)$"


class Options(BaseModel):
    """The base of every engine's options: unknown keys and wrong types are refused, never coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CallableOptions(Options):
    function: str  # "package.module:function", imported when the config is checked
    batch: bool = True  # False: the worker leases one job at a time

    @field_validator("function")
    @classmethod
    def _importable(cls, spec: str) -> str:
        resolve_callable(spec)
        return spec


class EmbeddingsOptions(Options):
    model: str | None = None  # a bundled model (default all-MiniLM-L6-v2)
    path: str | None = None  # or a local directory of a sentence-transformers model
    dataset: str | None = None  # or a key of swell.yaml's `datasets` (checked by swell.core.config)
    device: str | None = None  # cpu, cuda, cuda:N, mps or xpu; default: cuda when there is one

    @field_validator("model")
    @classmethod
    def _bundled(cls, name: str | None) -> str | None:
        from swell.engines.embeddings import DEFAULT_MODEL  # light: the module imports torch only to load

        if name is not None and name != DEFAULT_MODEL:
            raise ValueError(f"unknown bundled model {name!r} (bundled: {DEFAULT_MODEL}; or give 'path')")
        return name

    @field_validator("device")
    @classmethod
    def _device(cls, device: str | None) -> str | None:
        if device is not None and not re.fullmatch(DEVICE_PATTERN, device):
            raise ValueError(f"unknown device {device!r} (cpu, cuda, cuda:N, mps or xpu)")
        return device

    @field_validator("path")
    @classmethod
    def _path_or_model(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path is not None and info.data.get("model") is not None:
            raise ValueError("give 'model' or 'path', not both")
        return path

    @field_validator("dataset")
    @classmethod
    def _one_source(cls, dataset: str | None, info: ValidationInfo) -> str | None:
        for other in ("model", "path"):
            if dataset is not None and info.data.get(other) is not None:
                raise ValueError(f"give 'dataset' or '{other}', not both")
        return dataset


def validate_texts(payload: dict[str, Any]) -> None:
    """`input.texts`: a non-empty list of at most MAX_TEXTS strings of at most MAX_TEXT_CHARS each."""
    texts = payload.get("texts")
    if not isinstance(texts, list) or not texts:
        raise ValidationError("must be a non-empty list of strings", field="input.texts")
    if len(texts) > MAX_TEXTS:
        raise ValidationError(f"at most {MAX_TEXTS} texts per job", field="input.texts")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValidationError("must be a string", field=f"input.texts[{index}]")
        if len(text) > MAX_TEXT_CHARS:
            raise ValidationError(f"at most {MAX_TEXT_CHARS} characters", field=f"input.texts[{index}]")


@dataclass(frozen=True)
class EngineSpec:
    """What is known about an engine without importing it."""

    options: type[Options]
    factory: str  # "package.module:attr", imported only to build the engine
    extra: str | None = None  # `pip install 'swell[EXTRA]'` brings its dependencies
    data_plane: bool = False  # the factory takes `datasets=` and `data_dir=` (for `dataset:` options)
    check_input: Callable[[dict[str, Any]], None] | None = None  # cheap submit-time check


ENGINES: dict[str, EngineSpec] = {
    "callable": EngineSpec(CallableOptions, "swell.engines.callable:CallableEngine"),
    "embeddings": EngineSpec(
        EmbeddingsOptions,
        "swell.engines.embeddings:EmbeddingsEngine",
        extra="embeddings",
        data_plane=True,
        check_input=validate_texts,
    ),
}


@dataclass(frozen=True)
class Problem:
    """Why a service's engine or options cannot work; `key` is relative to the service."""

    key: str  # "engine" or "options.NAME"
    message: str

    def error(self) -> ConfigError:
        return ConfigError(self.message, key=self.key)


def engine_problem(name: str, options: dict[str, Any]) -> Problem | None:
    """The first thing wrong with engine `name` and its `options`, or None: an unknown name, a
    `module:attr` that does not import, an unknown, missing or mistyped option, a function that
    does not import. Imports the engine's module only for `module:attr` engines."""
    spec = ENGINES.get(name)
    if spec is not None:
        return _options_problem(spec.options, options, name)
    if ":" not in name:
        known = ", ".join(sorted(ENGINES))
        return Problem("engine", f"unknown engine {name!r} (built in: {known}; or 'package.module:attr')")
    try:
        factory = resolve_callable(name)
    except ValueError as exc:
        return Problem("engine", str(exc))
    model = getattr(factory, "Options", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return _options_problem(model, options, name)
    return None


def create_engine(
    name: str, options: dict[str, Any], *, data_dir: Path, datasets: dict[str, DatasetConfig] | None = None
) -> Engine:
    """Build (not load) the engine `name` with its options; a bad name or option is a ConfigError
    naming it (`engine`, `options.NAME`).

    `datasets` (swell.yaml's section) is what an option `dataset: NAME` refers to; `data_dir` holds the
    node cache such a dataset is fetched through.
    """
    if (problem := engine_problem(name, options)) is not None:
        raise problem.error()
    spec = ENGINES.get(name)
    if spec is None:
        factory: Callable[..., Engine] = resolve(name)
        return factory(**options)
    built: Callable[..., Engine] = _factory(spec)
    kwargs = spec.options.model_validate(options).model_dump(exclude_unset=True)
    if spec.data_plane:
        kwargs.update(datasets=datasets or {}, data_dir=data_dir)
    return built(**kwargs)


def validate_input(engine: str, options: dict[str, Any], payload: dict[str, Any]) -> None:
    """Cheap submit-time check of a job's input for `engine`; raises ValidationError naming the field."""
    if not isinstance(payload, dict):
        raise ValidationError("input must be a JSON object", field="input")
    spec = ENGINES.get(engine)
    if spec is not None and spec.check_input is not None:
        spec.check_input(payload)


def _factory(spec: EngineSpec) -> Any:
    try:
        return resolve(spec.factory)
    except ValueError as exc:
        hint = f"; pip install 'swell[{spec.extra}]'" if spec.extra else ""
        raise ConfigError(f"{exc}{hint}", key="engine") from None


def _options_problem(model: type[BaseModel], options: dict[str, Any], engine: str) -> Problem | None:
    if not isinstance(options, dict):
        return Problem("options", "must be a mapping of option names to values")
    try:
        model.model_validate(options)
    except pydantic.ValidationError as exc:
        return _problem(exc.errors()[0], model, engine)
    return None


def _problem(error: Any, model: type[BaseModel], engine: str) -> Problem:
    """One pydantic error as a Problem: `options.NAME` and a message a user can act on."""
    loc = [str(part) if isinstance(part, str) else f"[{part}]" for part in error["loc"]]
    key = re.sub(r"\.\[", "[", ".".join(["options", *loc]))
    known = ", ".join(sorted(model.model_fields))
    if error["type"] == "extra_forbidden":
        return Problem(key, f"unknown option {loc[0]!r} for engine {engine!r} (known: {known})")
    if error["type"] == "missing":
        return Problem(key, f"engine {engine!r} needs the option {loc[0]!r}")
    message = str(error["msg"]).removeprefix("Value error, ")
    return Problem(key, message)
