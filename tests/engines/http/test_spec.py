"""The http engine's options and inputs, checked without a server: errors name the key or field."""

from __future__ import annotations

import pytest

from swell.core.errors import ConfigError, ValidationError
from swell.engines.http.spec import SPEC, units
from swell.engines.registry import validate_input

ENGINE = "swell.engines.http.spec:SPEC"


@pytest.mark.parametrize(
    ("options", "key", "words"),
    [
        ({"mode": "comfy", "url": "http://127.0.0.1:1"}, "options.mode", "a1111"),
        ({"mode": "openai", "url": "ftp://host"}, "options.url", "http://"),
        ({"mode": "openai", "url": "http://user:pw@host"}, "options.url", "credentials"),
        ({"mode": "openai", "url": "http://10.0.0.5:8000", "command": ["vllm"]}, "options", "loopback"),
        (
            {"mode": "openai", "url": "http://127.0.0.1:1", "ready_url": "http://127.0.0.1:1/h"},
            "options",
            "command",
        ),
        ({"mode": "a1111", "url": "http://127.0.0.1:1", "command": []}, "options.command", "at least 1"),
        (
            {"mode": "a1111", "url": "http://127.0.0.1:1", "restart_backoff": 9, "restart_backoff_max": 2},
            "options",
            "exceed",
        ),
        ({"mode": "a1111"}, "options.url", "needs the option"),
    ],
)
def test_bad_options_name_their_key(options: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SPEC.parse_options(options)
    assert caught.value.key == key and words in caught.value.message


def test_good_options_default_their_readiness_url() -> None:
    parsed = SPEC.parse_options(
        {"mode": "a1111", "url": "http://localhost:7860/", "command": ["webui.sh", "--api"]}
    )
    assert parsed.url == "http://localhost:7860" and parsed.readiness_url().startswith(
        parsed.url + "/sdapi/v1/progress"
    )
    assert SPEC.batches_for(parsed) is False
    assert SPEC.batches_for(SPEC.parse_options({"mode": "openai", "url": "https://llm.internal"})) is True


@pytest.mark.parametrize(
    ("mode", "payload", "field"),
    [
        ("openai", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "input"),
        ("openai", {"prompt": "a", "temperature": 3}, "input.temperature"),
        ("openai", {"prompt": "a", "steps": 3}, "input.steps"),
        ("a1111", {"prompt": "a", "width": 65}, "input.width"),
        ("a1111", {"prompt": "a", "strength": 0.5}, "input"),
        ("a1111", {"prompt": "a", "native": {"override_settings": {}}}, "input"),
        ("a1111", {"prompt": "a", "max_tokens": 3}, "input.max_tokens"),
        ("a1111", {"prompt": "a", "loras": [{"name": "../x"}]}, "input.loras[0].name"),
    ],
)
def test_inputs_are_checked_per_mode_at_submit(mode: str, payload: dict[str, object], field: str) -> None:
    options = {"mode": mode, "url": "http://127.0.0.1:9"}
    with pytest.raises(ValidationError) as caught:
        validate_input(ENGINE, options, payload)
    assert caught.value.field == field


def test_the_other_engines_inputs_are_accepted() -> None:
    a1111 = {"mode": "a1111", "url": "http://127.0.0.1:9"}
    validate_input(
        ENGINE, a1111, {"prompt": "castle", "steps": 30, "sampler": "DPM++ 2S a", "seed": 7, "images": 2}
    )
    openai = {"mode": "openai", "url": "http://127.0.0.1:9"}
    validate_input(
        ENGINE, openai, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stop": "x"}
    )
    validate_input(ENGINE, openai, {"texts": ["a", "b"], "model": "embedder"})


def test_units_follow_the_fields() -> None:
    assert units({"prompt": "a", "steps": 30, "images": 2}) == {"steps": 30.0, "images": 2.0}
    assert units({"prompt": "a", "max_tokens": 100, "n": 2}) == {"tokens": 200.0}
    assert units({"texts": ["a", "b", "c"]}) == {"texts": 3.0}
