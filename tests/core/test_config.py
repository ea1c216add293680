"""Configuration: typed, validated, and every error names the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from swell.core.config import Settings, demo_config, load_config, parse_config
from swell.core.errors import ConfigError


def test_demo_serves_the_real_minilm() -> None:
    config = load_config(None)
    assert config == demo_config()
    (service,) = config.services
    assert (service.name, service.engine, service.options["model"]) == (
        "embeddings",
        "embeddings",
        "all-MiniLM-L6-v2",
    )


def test_a_full_file_loads(tmp_path: Path) -> None:
    file = tmp_path / "swell.yaml"
    file.write_text(
        """
services:
  - name: thumbs
    engine: "mypkg.images:thumbnail"
    replicas: {min: 0, max: 4}
    max_batch_size: 8
    job_timeout: 12.5
    max_attempts: 5
gateway: {max_body_bytes: 2048}
brain: {mode: enforce}
"""
    )
    config = load_config(file)
    service = config.service("thumbs")
    assert (service.replicas.min, service.replicas.max, service.max_batch_size) == (0, 4, 8)
    assert (service.job_timeout, service.max_attempts) == (12.5, 5)
    assert config.gateway.max_body_bytes == 2048
    assert config.brain.mode == "enforce"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("services: [{name: a, engine: callable, replicas: {min: 3, max: 1}}]", "services[a].replicas"),
        ("services: [{name: a, engine: callable, replicas: {maximum: 2}}]", "services[a].replicas.maximum"),
        ("services: [{name: a, engine: callable, max_batch_size: 0}]", "services[a].max_batch_size"),
        ("services: [{name: 'Bad Name', engine: callable}]", "services[Bad Name].name"),
        ("services: [{engine: callable}]", "services[0].name"),
        ("gateway: {max_body_bytes: 1}", "gateway.max_body_bytes"),
        ("brain: {mode: sometimes}", "brain.mode"),
        ("servces: []", "servces"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    file = tmp_path / "swell.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert caught.value.key == key
    assert str(file) in str(caught.value) and repr(key) in str(caught.value)


def test_duplicate_services_are_refused() -> None:
    with pytest.raises(ConfigError, match="repeated: a"):
        parse_config({"services": [{"name": "a", "engine": "callable"}] * 2})


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- just a list")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_settings_from_environment_with_flags_winning() -> None:
    env = {
        "SWELL_PORT": "9001",
        "SWELL_API_KEY": "k",
        "SWELL_CALLBACK_ALLOW_HOSTS": "Hooks.internal, 10.0.0.5",
        "SWELL_DATA_DIR": "/srv/swell",
    }
    settings = Settings.from_env(env, port=9002)
    assert settings.port == 9002 and settings.api_key == "k"
    assert settings.callback_allow_hosts == frozenset({"hooks.internal", "10.0.0.5"})
    assert settings.database_url == "sqlite:////srv/swell/swell.db"
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SWELL_PORT": "eighty"})
    assert caught.value.key == "SWELL_PORT"


DATASET_SERVICE = """
datasets:
  minilm: {source: "file:///models/minilm"}
services:
  - name: other
    engine: callable
  - name: embed
    engine: embeddings
    options: {dataset: %s}
"""


def test_an_engine_dataset_names_a_known_dataset(tmp_path: Path) -> None:
    file = tmp_path / "swell.yaml"
    file.write_text(DATASET_SERVICE % "minilm")
    assert load_config(file).service("embed").options == {"dataset": "minilm"}


@pytest.mark.parametrize(
    ("value", "message"),
    [("minlm", r"no dataset named 'minlm' in datasets \(known: minilm\)"), ("[a]", "a string")],
)
def test_an_unknown_dataset_is_named_with_its_key_and_file(tmp_path: Path, value: str, message: str) -> None:
    file = tmp_path / "swell.yaml"
    file.write_text(DATASET_SERVICE % value)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(file)
    assert caught.value.key == "services[embed].options.dataset"
    assert str(file) in str(caught.value)


def test_a_dataset_without_a_datasets_section_is_refused() -> None:
    raw = {"services": [{"engine": "embeddings", "name": "e", "options": {"dataset": "minilm"}}]}
    with pytest.raises(ConfigError, match=r"known: none") as caught:
        parse_config(raw)
    assert caught.value.key == "services[e].options.dataset"
