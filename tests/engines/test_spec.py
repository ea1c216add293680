"""Engine specs: options and inputs checked through them, units, batching, factories, light imports."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from swell.core.config import parse_config
from swell.core.errors import ConfigError, MissingExtra, ValidationError
from swell.data.config import DatasetConfig
from swell.engines import registry
from swell.engines.base import LoadTimings, MemorySignals, RunContext
from swell.engines.callable import CallableEngine
from swell.engines.results import LocalResultStore
from swell.engines.spec import EngineEnv, EngineSpec, Problem, dataset_named, total_units
from tests.engines.progressive import SPEC as PAINTER
from tests.engines.progressive import Painter

USER = "tests.engines.progressive:SPEC"


def config_with(engine: str, options: dict) -> dict:
    return {"services": [{"name": "art", "engine": engine, "options": options}]}


@pytest.mark.parametrize(
    ("engine", "options", "key", "message"),
    [
        (USER, {"max_widht": 8}, "services[art].options.max_widht", "unknown option 'max_widht'"),
        (USER, {"max_width": 4}, "services[art].options.max_width", "greater than or equal to 8"),
        (USER, {"batch": "yes"}, "services[art].options.batch", "valid boolean"),
        ("tests.engines.progressive:NOT_A_SPEC", {}, "services[art].engine", "not a callable"),
        ("embeddings", {"device": "tpu"}, "services[art].options.device", "unknown device 'tpu'"),
    ],
)
def test_config_errors_name_the_service_option(engine: str, options: dict, key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(config_with(engine, options))
    assert caught.value.key == key


def test_a_user_spec_is_accepted_like_a_builtin() -> None:
    config = parse_config(config_with(USER, {"max_width": 512}))
    assert config.services[0].engine == USER
    assert registry.engine_spec(USER) is PAINTER


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({}, "input.prompt", "needs the field 'prompt'"),
        ({"prompt": 3}, "input.prompt", "valid string"),
        ({"prompt": "a", "steps": "4"}, "input.steps", "valid integer"),
        ({"prompt": "a", "steps": 4.0}, "input.steps", "valid integer"),
        ({"prompt": "a", "steps": 51}, "input.steps", "less than or equal to 50"),
        ({"prompt": "a", "width": 65}, "input.width", "multiple of 8"),
        ({"prompt": "a", "seeed": 1}, "input.seeed", "unknown field 'seeed' for engine 'painter' (known: "),
        ({"prompt": "a", "loras": [{"name": "x", "weight": 3}]}, "input.loras[0].weight", "less than"),
        ({"prompt": "a", "loras": [{"weight": 1}]}, "input.loras[0].name", "needs the field 'name'"),
        ({"prompt": "a", "loras": [{"name": "x", "w": 1}]}, "input.loras[0].w", "unknown field 'w'"),
        ({"prompt": "a", "width": 2048}, "input.width", "at most 1024"),  # the spec's check, on the options
    ],
)
def test_input_errors_name_the_field(payload: dict, field: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        registry.validate_input(USER, {"max_width": 1024}, payload)
    assert caught.value.field == field
    assert message in caught.value.message


def test_valid_input_passes_and_engines_without_a_spec_take_any_object() -> None:
    registry.validate_input(USER, {}, {"prompt": "a", "loras": [{"name": "x"}], "width": 512})
    registry.validate_input("callable", {"function": "builtins:dict"}, {"anything": [1, {"x": None}]})
    registry.validate_input("tests.engines.samples:Upper", {}, {"whatever": 1})
    with pytest.raises(ValidationError) as caught:
        registry.validate_input(USER, {}, [1])  # type: ignore[arg-type]
    assert caught.value.field == "input"


def test_embeddings_input_is_the_texts_rule() -> None:
    registry.validate_input("embeddings", {}, {"texts": ["a"], "model": "ignored"})
    cases: list[tuple[dict[str, Any], str]] = [
        ({"texts": "abc"}, "input.texts"),
        ({"texts": ["a"] * 1025}, "input.texts"),
        ({"texts": ["a", "b" * 100_001]}, "input.texts[1]"),
    ]
    for payload, field in cases:
        with pytest.raises(ValidationError) as caught:
            registry.validate_input("embeddings", {}, payload)
        assert caught.value.field == field


def test_units_and_batching_come_from_the_spec() -> None:
    assert registry.job_units(USER, {"prompt": "a", "steps": 30, "images": 2}) == {"steps": 30, "images": 2}
    assert registry.work_units(USER, {"prompt": "a", "steps": 30, "images": 2}) == 60.0
    assert registry.job_units("embeddings", {"texts": ["a", "b", "c"]}) == {"texts": 3.0}
    assert registry.job_units("callable", {"x": 1}) == {"jobs": 1.0}
    assert registry.job_units("tests.engines.samples:Upper", {}) == {"jobs": 1.0}
    assert registry.job_units("no-such-engine", {}) == {"jobs": 1.0}  # never raises
    assert total_units({}) == 1.0 and total_units({"a": math.nan, "b": -1, "c": 3}) == 3.0
    callable_spec = registry.engine_spec("callable")
    assert callable_spec is not None
    options = callable_spec.parse_options({"function": "builtins:dict", "batch": False})
    assert callable_spec.batches_for(options) is False
    assert PAINTER.batches_for(PAINTER.parse_options({})) is True
    key = registry.batch_key_of(USER)
    assert key is not None and key({"width": 64}) == key({"width": 64, "prompt": "other"})
    assert registry.batch_key_of("callable") is None


def test_a_user_spec_engine_is_built_with_its_options_and_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SWELL_DEVICE", "cuda:1")
    datasets = {"m": DatasetConfig(source="file:///m")}
    engine = registry.create_engine(USER, {"max_width": 256}, data_dir=tmp_path, datasets=datasets)
    assert isinstance(engine, Painter)
    assert engine.options.max_width == 256 and engine.batches is True
    assert engine.env.device == "cuda:1" and engine.env.data_dir == tmp_path
    assert isinstance(engine.env.results, LocalResultStore) and engine.env.dataset("m") == datasets["m"]
    with pytest.raises(ConfigError, match=r"no dataset named 'n' \(known: m\)") as caught:
        engine.env.dataset("n")
    assert caught.value.key == "options.dataset"
    assert LoadTimings.of(engine.load()) == LoadTimings(fetch=0.5, load=0.25, warmup=0.0)
    with pytest.raises(ConfigError) as caught:
        registry.create_engine(USER, {"max_width": "wide"}, data_dir=tmp_path)
    assert caught.value.key == "options.max_width"


def test_a_missing_dependency_names_the_extra(tmp_path: Path) -> None:
    with pytest.raises(MissingExtra, match=r"pip install 'swell\[diffusers\]'"):
        registry.create_engine("tests.engines.progressive:MISSING", {}, data_dir=tmp_path)
    broken = EngineSpec(name="broken", factory="not-an-import-string")
    with pytest.raises(ConfigError) as caught:
        broken.load_factory()
    assert caught.value.key == "engine"


def test_problems_are_keyed_relative_to_the_service() -> None:
    assert registry.engine_problem("embedings", {}) == Problem(
        "engine",
        "unknown engine 'embedings' (built in: "
        + ", ".join(registry.ENGINES)
        + "; or 'package.module:attr')",
    )
    problem = registry.engine_problem(USER, {"max_width": 1, "batch": True})
    assert problem is not None and problem.key == "options.max_width"
    not_a_mapping: Any = []
    assert registry.engine_problem(USER, not_a_mapping) == Problem(
        "options", "must be a mapping of option names to values"
    )
    assert dataset_named({"a": DatasetConfig(source="file:///a")}, "a").source == "file:///a"


def test_load_timings_is_one_type() -> None:
    timings = LoadTimings.of({"fetch": 1, "load": 2.5, "warmup": None, "other": 9})
    assert timings == LoadTimings(1.0, 2.5, 0.0) and timings.total == 3.5
    assert timings.to_dict() == {"fetch": 1.0, "load": 2.5, "warmup": 0.0}
    assert json.loads(json.dumps(timings.to_dict())) == timings.to_dict()
    assert LoadTimings.of(None) == LoadTimings() and LoadTimings.of(timings) is timings


def test_a_run_context_reports_progress_text_and_cancels(tmp_path: Path) -> None:
    signals = MemorySignals()
    context = RunContext(["a", "b"], tmp_path, signals=signals)
    context.progress("a", 0.5, message="half")
    context.progress("a", 7)  # clamped
    context.progress("b", -1, preview=b"png")
    context.delta("b", "he")
    context.delta("b", "")  # nothing to send
    context.delta("b", "llo")
    assert signals.fractions("a") == [0.5, 1.0] and signals.fractions("b") == [0.0]
    assert signals.text("b") == "hello" and signals.previews == {"b": b"png"}
    assert not context.cancelled("a")
    threading.Thread(target=signals.cancel, args=("a",)).start()
    while not context.cancelled("a"):
        pass
    assert not context.cancelled("b")
    with pytest.raises(ValueError, match="not in this call"):
        context.progress("c", 0.1)
    with pytest.raises(ValueError, match="from 0 to 1"):
        context.progress("a", math.nan)
    assert isinstance(context.results, LocalResultStore)
    assert context.results.put("a", "x.txt", b"x", "text/plain") == "x.txt"
    assert (tmp_path / "files" / "a" / "x.txt").read_bytes() == b"x"


def test_outside_a_worker_the_context_does_nothing(tmp_path: Path) -> None:
    context = RunContext(["a"], tmp_path)
    context.progress("a", 0.3)
    context.delta("a", "x")
    assert context.cancelled("a") is False


def test_a_callable_with_two_arguments_gets_its_job(tmp_path: Path) -> None:
    engine = CallableEngine("tests.engines.progressive:count")
    assert LoadTimings.of(engine.load()) == LoadTimings()
    signals = MemorySignals()
    [result] = engine.run([{"steps": 3}], RunContext(["j"], tmp_path, signals=signals))
    assert result == {"steps": 3, "file": "count.txt"}
    assert signals.text("j") == "0 1 2 " and signals.fractions("j") == pytest.approx([1 / 3, 2 / 3, 1.0])
    signals.cancel("k")
    cancelled, done = engine.run(
        [{"steps": 3}, {"steps": 1}], RunContext(["k", "l"], tmp_path, signals=signals)
    )
    assert type(cancelled).__name__ == "JobCancelled" and done == {"steps": 1, "file": "count.txt"}


def test_env_builds_without_a_worker(tmp_path: Path) -> None:
    env = EngineEnv(tmp_path, {}, LocalResultStore(tmp_path))
    assert env.device is None and env.results.put("j", "a.bin", b"1", "application/octet-stream") == "a.bin"


def _spec_modules() -> list[str]:
    """Every built-in spec module, and the spec modules of engine packages that are present."""
    modules = [target.partition(":")[0] for target in registry.ENGINES.values()]
    for package in ("diffusers", "transformers", "http"):
        name = f"swell.engines.{package}.spec"
        try:
            found = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            found = None
        if found is not None:
            modules.append(name)
    return sorted({*modules, "swell.engines.registry", "swell.engines.spec", "swell.engines.results"})


def test_spec_modules_import_no_heavy_library() -> None:
    """In a fresh interpreter: checking a config and validating input never imports torch & co."""
    modules = _spec_modules()
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "from swell.engines import registry\n"
        "for name in registry.ENGINES: registry.engine_spec(name)\n"
        "registry.engine_problem('embeddings', {'device': 'cpu'})\n"
        "registry.validate_input('embeddings', {}, {'texts': ['a']})\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'sentence_transformers', 'numpy',"
        " 'safetensors', 'obstore', 'peft', 'accelerate') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported {out.stdout.strip()} through {modules}"
