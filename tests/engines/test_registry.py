import importlib
from pathlib import Path

import pytest

from swell.core.errors import ConfigError, ValidationError
from swell.data.config import DatasetConfig
from swell.engines.base import RunContext
from swell.engines.callable import CallableEngine
from swell.engines.embeddings import EmbeddingsEngine
from swell.engines.registry import ENGINES, Problem, create_engine, engine_problem, validate_input
from swell.engines.spec import EngineSpec


def echo(item: dict) -> dict:
    return {"echo": item}


def not_json(item: dict) -> dict:
    return {"x": object()}


def test_callable_engine_runs_each_input(tmp_path: Path) -> None:
    engine = create_engine("callable", {"function": "tests.engines.test_registry:echo"}, data_dir=tmp_path)
    engine.load()
    results = engine.run([{"a": 1}, {"b": 2}], RunContext(["j1", "j2"], tmp_path))
    assert results == [{"echo": {"a": 1}}, {"echo": {"b": 2}}]


def test_callable_engine_rejects_non_json_result(tmp_path: Path) -> None:
    options = {"function": "tests.engines.test_registry:not_json"}
    engine = create_engine("callable", options, data_dir=tmp_path)
    engine.load()
    [result] = engine.run([{}], RunContext(["j1"], tmp_path))
    assert isinstance(result, Exception) and "not_json" in str(result)


def test_unknown_engine_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope"):
        create_engine("nope", {}, data_dir=tmp_path)


@pytest.mark.parametrize(
    ("payload", "field"),
    [({}, "input.texts"), ({"texts": []}, "input.texts"), ({"texts": ["a", 3]}, "input.texts[1]")],
)
def test_embeddings_input_errors_name_the_field(payload: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_input("embeddings", {}, payload)
    assert info.value.field == field


def test_valid_embeddings_input_passes() -> None:
    validate_input("embeddings", {}, {"texts": ["hello"]})


def test_unknown_and_mistyped_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option 'modle'") as caught:
        create_engine("embeddings", {"modle": "x"}, data_dir=tmp_path)
    assert caught.value.key == "options.modle"
    with pytest.raises(ConfigError) as caught:
        create_engine("callable", {"function": "tests.engines.samples:shout", "batch": 1}, data_dir=tmp_path)
    assert caught.value.key == "options.batch"


def test_a_callable_function_is_imported_when_the_engine_is_built(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no attribute 'absent'") as caught:
        create_engine("callable", {"function": "tests.engines.samples:absent"}, data_dir=tmp_path)
    assert caught.value.key == "options.function"


def test_builtin_options_reach_the_engine(tmp_path: Path) -> None:
    options = {"function": "tests.engines.samples:shout", "batch": False}
    engine = create_engine("callable", options, data_dir=tmp_path)
    assert isinstance(engine, CallableEngine) and engine.batches is False
    engine.load()
    assert engine.run([{"text": "hi"}], RunContext(["j"], tmp_path)) == [{"text": "HI"}]


def test_embeddings_options_are_checked_without_building_a_model(tmp_path: Path) -> None:
    datasets = {"minilm": DatasetConfig(source="file:///models/minilm")}
    engine = create_engine(
        "embeddings", {"dataset": "minilm", "device": "cpu"}, data_dir=tmp_path, datasets=datasets
    )
    assert isinstance(engine, EmbeddingsEngine)
    assert (engine.model, engine.dataset, engine.device, engine.data_dir) == (
        "minilm",
        "minilm",
        "cpu",
        tmp_path,
    )
    assert engine_problem("embeddings", {"dataset": "minilm", "path": "/m"}) == Problem(
        "options.dataset", "give 'dataset' or 'path', not both"
    )


def test_a_custom_engine_is_checked_against_its_options_model(tmp_path: Path) -> None:
    problem = engine_problem("tests.engines.samples:Upper", {"suffix": 3})
    assert problem is not None and problem.key == "options.suffix"
    engine = create_engine("tests.engines.samples:Upper", {"suffix": "!"}, data_dir=tmp_path)
    assert engine.run([{"text": "a"}], RunContext(["j"], tmp_path)) == [{"text": "A!"}]


def test_every_builtin_spec_names_itself_and_an_importable_factory() -> None:
    for name, target in ENGINES.items():
        module, _, attr = target.partition(":")
        spec = getattr(importlib.import_module(module), attr)
        assert isinstance(spec, EngineSpec) and spec.name == name
        if spec.extra is None or name == "embeddings":  # the test environment has the embeddings extra
            assert callable(spec.load_factory()), name


def test_input_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        validate_input("callable", {}, ["not", "a", "dict"])  # type: ignore[arg-type]
    assert info.value.field == "input"
