"""Fake servers on loopback and http engines in front of them, with signals kept in memory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from swell.engines.base import MemorySignals, RunContext
from swell.engines.http.engine import HttpEngine
from swell.engines.http.spec import SPEC
from swell.engines.results import LocalResultStore
from swell.engines.spec import EngineEnv
from tests.engines.http.servers import FakeA1111, FakeOpenAI


@pytest.fixture
def a1111() -> Iterator[FakeA1111]:
    server = FakeA1111().start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture
def oai() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI(piece_seconds=0.005).start()
    yield server  # type: ignore[misc]
    server.stop()


def make_engine(tmp_path: Path, **options: Any) -> HttpEngine:
    env = EngineEnv(data_dir=tmp_path, datasets={}, results=LocalResultStore(tmp_path))
    engine = HttpEngine(SPEC.parse_options(options), env)
    engine.load()
    return engine


def run(
    engine: HttpEngine, inputs: Sequence[dict[str, Any]], tmp_path: Path, signals: MemorySignals | None = None
) -> tuple[list[Any], MemorySignals]:
    signals = signals if signals is not None else MemorySignals()
    ids = [f"j{i}" for i in range(len(inputs))]
    context = RunContext(ids, tmp_path, signals=signals, results=LocalResultStore(tmp_path))
    return engine.run(list(inputs), context), signals
