"""Engines by name: built-ins, or any `package.module:attr` class or factory. Imports nothing heavy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from swell.core.errors import ConfigError, ValidationError
from swell.data.config import DatasetConfig
from swell.engines.base import Engine

MAX_TEXTS = 1024
MAX_TEXT_CHARS = 100_000


def create_engine(
    name: str, options: dict[str, Any], *, data_dir: Path, datasets: dict[str, DatasetConfig] | None = None
) -> Engine:
    """Build (not load) the engine `name` with its options; an unknown name is a ConfigError naming it.

    `datasets` (swell.yaml's section) is what an option `dataset: NAME` refers to; `data_dir` holds the
    node cache such a dataset is fetched through.
    """
    if name == "callable":
        from swell.engines.callable import CallableEngine

        return CallableEngine(**_checked(options, {"function", "batch"}, name))
    if name == "embeddings":
        from swell.engines.embeddings import EmbeddingsEngine

        checked = _checked(options, {"model", "path", "dataset", "device"}, name)
        if "dataset" in checked:
            if "model" in checked:
                raise ConfigError("give 'dataset' or 'model', not both", key="engine.options.dataset")
            return EmbeddingsEngine(**checked, datasets=datasets or {}, data_dir=data_dir)
        return EmbeddingsEngine(**checked)
    if ":" in name:
        from swell.engines.callable import import_attr

        factory: Callable[..., Engine] = import_attr(name, key="engine")
        return factory(**options)
    raise ConfigError(
        f"unknown engine {name!r} (built in: callable, embeddings; or 'package.module:attr')", key="engine"
    )


def validate_input(engine: str, options: dict[str, Any], payload: dict[str, Any]) -> None:
    """Cheap submit-time check of a job's input for `engine`; raises ValidationError naming the field."""
    if not isinstance(payload, dict):
        raise ValidationError("input must be a JSON object", field="input")
    if engine == "embeddings":
        validate_texts(payload)


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


def _checked(options: dict[str, Any], allowed: set[str], engine: str) -> dict[str, Any]:
    unknown = sorted(set(options) - allowed)
    if unknown:
        key = f"engine.options.{unknown[0]}"
        raise ConfigError(f"unknown option {unknown[0]!r} for engine {engine!r}", key=key)
    return options
