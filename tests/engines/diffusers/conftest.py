"""Tiny random SD models (noise, real layouts) written once per session, and an engine over them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from swell.engines.base import MemorySignals, RunContext
from swell.engines.results import LocalResultStore
from swell.engines.spec import EngineEnv
from swell.models.tiny import make_tiny

LORAS = 6
SMALL = {"steps": 3, "width": 64, "height": 64}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "sd": make_tiny("sd", root / "sd"),
        "controlnet": make_tiny("controlnet", root / "controlnet"),
        "loras": make_tiny("lora", root / "loras", count=LORAS),
    }


@pytest.fixture(scope="session")
def engine(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from swell.engines.diffusers.engine import DiffusersEngine
    from swell.engines.diffusers.spec import SPEC

    data = tmp_path_factory.mktemp("data")
    options = SPEC.parse_options(
        {
            "path": str(tiny["sd"]),
            "controlnet": str(tiny["controlnet"]),
            "loras": str(tiny["loras"]),
            "lora_cache": 3,
            "device": "cpu",
            "preview_every": 1,
        }
    )
    built = DiffusersEngine(options, EngineEnv(data_dir=data, datasets={}, results=LocalResultStore(data)))
    built.load()
    yield built
    built.unload()


def context(job_ids: list[str], data_dir: Path, signals: MemorySignals | None = None) -> RunContext:
    return RunContext(
        job_ids, data_dir, signals=signals or MemorySignals(), results=LocalResultStore(data_dir)
    )
