from pathlib import Path

import pytest

from swell.core.errors import ConfigError, ValidationError
from swell.engines.base import RunContext
from swell.engines.registry import create_engine, validate_input


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
