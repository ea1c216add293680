"""A tiny random LM written once per session (its text is noise), and an engine loaded from it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from swell.engines.base import MemorySignals, RunContext
from swell.engines.results import LocalResultStore
from swell.engines.spec import EngineEnv
from swell.engines.transformers.spec import SPEC


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from swell.models.tiny_llm import make_tiny_llm

    return make_tiny_llm(tmp_path_factory.mktemp("tiny-llm") / "llm")


@pytest.fixture(scope="session")
def tokenizer(tiny_llm: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llm, local_files_only=True)


def make_engine(directory: Path, data_dir: Path, **options: Any) -> Any:
    from swell.engines.transformers.engine import TransformersEngine

    env = EngineEnv(data_dir=data_dir, datasets={}, results=LocalResultStore(data_dir), device="cpu")
    return TransformersEngine(SPEC.parse_options({"path": str(directory), **options}), env)


@pytest.fixture(scope="session")
def engine(tiny_llm: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    built = make_engine(tiny_llm, tmp_path_factory.mktemp("data"), max_batch_rows=8)
    built.load()
    return built


def run(
    engine: Any, inputs: Sequence[dict[str, Any]], signals: MemorySignals | None = None
) -> tuple[list[Any], MemorySignals]:
    """`engine.run` on jobs j0, j1, ... with signals kept in memory; also what `report` received."""
    signals = signals if signals is not None else MemorySignals()
    ids = [f"j{i}" for i in range(len(inputs))]
    reported: dict[str, Any] = {}
    context = RunContext(ids, Path("."), sink=reported.__setitem__, signals=signals)
    results = engine.run(list(inputs), context)
    for job_id, result in zip(ids, results, strict=True):
        if not isinstance(result, BaseException):
            assert reported[job_id] == result, "a finished job is reported before the call returns"
    return results, signals
