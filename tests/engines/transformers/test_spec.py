"""The transformers engine's light spec: options and inputs checked without torch, keys named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from swell.core.errors import ConfigError, ValidationError
from swell.data import DatasetConfig
from swell.engines.registry import create_engine, engine_problem, job_units, validate_input
from swell.engines.transformers.spec import SPEC

ENGINE = "swell.engines.transformers.spec:SPEC"


def test_the_spec_imports_no_torch() -> None:
    code = (
        "import sys; import swell.engines.transformers.spec as s; "
        "s.SPEC.parse_input({'prompt': 'x'}); s.SPEC.parse_options({'path': '/m'}); "
        "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        ({}, "options", "exactly one of 'path'"),
        ({"path": "/m", "dataset": "d"}, "options", "exactly one of 'path'"),
        ({"path": "/m", "dtype": "int4"}, "options.dtype", "float32"),
        ({"path": "/m", "device": "gpu"}, "options.device", "unknown device"),
        ({"path": "/m", "max_batch_rows": 0}, "options.max_batch_rows", "greater than or equal to 1"),
        ({"path": "/m", "trust_remote_code": True}, "options.trust_remote_code", "unknown option"),
    ],
)
def test_options_are_checked_naming_the_key(options: dict[str, object], key: str, message: str) -> None:
    problem = engine_problem(ENGINE, options)
    assert problem is not None and problem.key == key and message in problem.message


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "input"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "input"),
        ({"messages": []}, "input.messages"),
        ({"messages": [{"role": "user"}]}, "input.messages[0].content"),
        ({"messages": [{"role": "a b", "content": "y"}]}, "input.messages[0].role"),
        ({"prompt": "x", "max_tokens": 0}, "input.max_tokens"),
        ({"prompt": "x", "max_tokens": "8"}, "input.max_tokens"),
        ({"prompt": "x", "temperature": -0.1}, "input.temperature"),
        ({"prompt": "x", "top_p": 0}, "input.top_p"),
        ({"prompt": "x", "top_k": -1}, "input.top_k"),
        ({"prompt": "x", "stop": ["a"] * 17}, "input.stop"),
        ({"prompt": "x", "seed": -1}, "input.seed"),
        ({"prompt": "x", "n": 0}, "input.n"),
        ({"prompt": "x", "best_of": 2}, "input.best_of"),
        ({"prompt": "x", "max_tokens": 4097}, "input.max_tokens"),  # over the service's max_tokens
        ({"prompt": "x", "n": 17}, "input.n"),  # over the service's max_batch_rows
    ],
)
def test_inputs_are_checked_at_submit_naming_the_field(payload: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        validate_input(ENGINE, {"path": "/m"}, payload)
    assert refused.value.field == field


def test_a_stop_string_alone_is_a_list_of_one_and_ints_are_floats() -> None:
    job = SPEC.parse_input({"prompt": "x", "stop": "\n\n", "temperature": 1, "top_p": 1})
    assert job.stops() == ("\n\n",) and job.temperature == 1.0
    validate_input(ENGINE, {"path": "/m", "max_tokens": 64}, {"prompt": "x", "max_tokens": 64, "n": 16})


def test_units_are_the_tokens_a_job_may_generate() -> None:
    assert job_units(ENGINE, {"prompt": "x", "max_tokens": 100, "n": 3}) == {"tokens": 300.0}
    assert job_units(ENGINE, {"prompt": "x"}) == {"tokens": 16.0}


def test_prompts_of_like_length_share_a_batch_key() -> None:
    key = SPEC.batch_key
    assert key is not None
    short = [key({"prompt": "x" * n}) for n in (0, 10, 1000)]
    assert short == [0, 0, 0]
    assert key({"prompt": "x" * 2000}) == key({"prompt": "x" * 4000}) != key({"prompt": "x" * 9000})
    chat = {"messages": [{"role": "user", "content": "x" * 5000}, {"role": "user", "content": "y" * 4000}]}
    assert key(chat) == key({"prompt": "x" * 9000})


def test_an_unknown_dataset_is_refused_when_the_engine_is_built(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    datasets = {"other": DatasetConfig(source=f"file://{tmp_path}")}
    with pytest.raises(ConfigError, match="no dataset named 'llm'") as refused:
        create_engine(ENGINE, {"dataset": "llm"}, data_dir=tmp_path, datasets=datasets)
    assert refused.value.key == "options.dataset"
