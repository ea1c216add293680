"""Configuration: typed, validated, and every error names the key and the file."""

from __future__ import annotations

import subprocess
import sys
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
    engine: "tests.engines.samples:Upper"
    options: {suffix: "!"}
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
    options: {function: "tests.engines.samples:shout"}
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


def _service_file(tmp_path: Path, engine: str, options: str = "{}", extra: str = "") -> Path:
    file = tmp_path / "swell.yaml"
    file.write_text(
        f"services:\n  - name: good\n    engine: callable\n    options: {{function: 'builtins:dict'}}\n"
        f"  - name: bad\n    engine: {engine!r}\n    options: {options}\n{extra}"
    )
    return file


@pytest.mark.parametrize(
    ("engine", "options", "key", "message"),
    [
        ("embedings", "{}", "engine", "unknown engine 'embedings' (built in: callable, embeddings"),
        ("tests.engines.absent:Engine", "{}", "engine", "No module named 'tests.engines.absent'"),
        ("tests.engines.samples:Nothing", "{}", "engine", "has no attribute 'Nothing'"),
        ("tests.engines.samples:NOT_CALLABLE", "{}", "engine", "is a int, not a callable"),
        ("tests.engines.samples:Upper", "{sufix: x}", "options.sufix", "unknown option 'sufix'"),
        ("embeddings", "{modle: x}", "options.modle", "unknown option 'modle' for engine 'embeddings'"),
        ("embeddings", "{device: gpu}", "options.device", "unknown device 'gpu'"),
        ("embeddings", "{device: 0}", "options.device", "valid string"),
        ("embeddings", "{model: all-MiniLM-L6-v3}", "options.model", "unknown bundled model"),
        ("embeddings", "{model: all-MiniLM-L6-v2, path: /m}", "options.path", "'model' or 'path'"),
        ("callable", "{}", "options.function", "engine 'callable' needs the option 'function'"),
        ("callable", "{function: 'builtins:dict', batch: 'no'}", "options.batch", "valid boolean"),
        (
            "callable",
            "{function: 'builtins:dict', batches: true}",
            "options.batches",
            "known: batch, function",
        ),
        ("callable", "{function: nomodule}", "options.function", "not of the form 'package.module:attr'"),
        ("callable", "{function: 'tests.engines.nope:run'}", "options.function", "No module named"),
        ("callable", "{function: 'tests.engines.samples:shot'}", "options.function", "no attribute 'shot'"),
        (
            "callable",
            "{function: 'tests.engines.samples:NOT_CALLABLE'}",
            "options.function",
            "not a callable",
        ),
        (
            "callable",
            "{function: 'tests.engines.explodes_on_import:run'}",
            "options.function",
            "RuntimeError: this module refuses to import",
        ),
    ],
)
def test_every_service_engine_is_checked_when_the_file_loads(
    tmp_path: Path, engine: str, options: str, key: str, message: str
) -> None:
    file = _service_file(tmp_path, engine, options)
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert caught.value.key == f"services[bad].{key}"
    assert message in str(caught.value) and str(file) in str(caught.value)


def test_valid_engines_and_options_load(tmp_path: Path) -> None:
    file = _service_file(tmp_path, "embeddings", "{path: /models/minilm, device: 'cuda:1'}")
    assert load_config(file).service("bad").options == {"path": "/models/minilm", "device": "cuda:1"}
    file = _service_file(tmp_path, "callable", "{function: 'tests.engines.samples:shout', batch: false}")
    assert load_config(file).service("bad").options["batch"] is False


def test_a_service_without_a_name_is_named_by_its_position() -> None:
    raw = {"services": [{"name": "a", "engine": "callable", "options": {"function": "builtins:dict"}}]}
    raw["services"].append({"name": "b", "engine": "callable"})
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert caught.value.key == "services[b].options.function"


def test_checking_embeddings_options_imports_no_torch(tmp_path: Path) -> None:
    """Config loading stays light: a fresh interpreter checks an embeddings service without torch."""
    file = _service_file(tmp_path, "embeddings", "{model: all-MiniLM-L6-v2, device: cpu}")
    code = (
        "import sys; from swell.core.config import load_config; "
        f"load_config({str(file)!r}); "
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("[SWELL_API_KEY]", "would pass the gateway's secrets"),
        ("['SWELL_*']", "would pass the gateway's secrets"),
        ("['S*']", "would pass the gateway's secrets"),
        ("['*']", "not an environment variable's name"),
        ("['MY VAR']", "not an environment variable's name"),
    ],
)
def test_pass_env_never_names_the_gateway_secrets(tmp_path: Path, names: str, message: str) -> None:
    file = _service_file(tmp_path, "callable", "{function: 'builtins:dict'}", f"    pass_env: {names}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(file)
    assert caught.value.key == "services[bad].pass_env"


def test_pass_env_lists_names_and_prefixes(tmp_path: Path) -> None:
    extra = "    pass_env: [OPENAI_API_KEY, 'MYAPP_*']\n"
    file = _service_file(tmp_path, "callable", "{function: 'builtins:dict'}", extra)
    assert load_config(file).service("bad").pass_env == ["OPENAI_API_KEY", "MYAPP_*"]
