"""A single-file (original-layout, A1111) checkpoint with a local config folder, through a path and
through a dataset, read by swell.data's loader: the same images as the diffusers folder it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from swell.core.errors import ConfigError
from swell.engines.results import LocalResultStore
from swell.engines.spec import EngineEnv
from swell.models.tiny import CONFIG_FOLDER, SINGLE_FILE, make_tiny
from tests.engines.diffusers.conftest import SMALL, context

JOB = {"prompt": "a red cat", "seed": 11, "sampler": "Euler", **SMALL}


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny("sd", tmp_path_factory.mktemp("single") / "sd", single_file=True)


def engine(options: dict[str, Any], data: Path, datasets: dict[str, Any] | None = None) -> Any:
    from swell.engines.diffusers.engine import DiffusersEngine
    from swell.engines.diffusers.spec import SPEC

    parsed = SPEC.parse_options({"device": "cpu", "warmup": False, **options})
    env = EngineEnv(data_dir=data, datasets=datasets or {}, results=LocalResultStore(data))
    built = DiffusersEngine(parsed, env)
    built.load()
    return built


def image(built: Any, out: Path) -> bytes:
    [result] = built.run([JOB], context(["j0"], out))
    assert not isinstance(result, BaseException), result
    return (out / "files" / "j0" / "0.png").read_bytes()


def test_the_config_folder_holds_no_weights(tiny_sd: Path) -> None:
    config = tiny_sd / CONFIG_FOLDER
    assert (config / "model_index.json").is_file() and (config / "unet" / "config.json").is_file()
    assert not list(config.rglob("*.safetensors"))


def test_a_single_file_by_path_gives_the_folders_images(tiny_sd: Path, tmp_path: Path) -> None:
    folder = engine({"path": str(tiny_sd)}, tmp_path / "folder")
    single = engine(
        {"checkpoint": str(tiny_sd / SINGLE_FILE), "config": str(tiny_sd / CONFIG_FOLDER)}, tmp_path / "file"
    )
    assert single.model == "tiny-sd"  # the file's stem
    single.model = folder.model  # the infotext names the model: the same name, so the same bytes
    assert image(single, tmp_path / "a") == image(folder, tmp_path / "b")


def test_a_single_file_in_a_dataset_is_fetched_through_the_node_cache(tiny_sd: Path, tmp_path: Path) -> None:
    from swell.data import DatasetConfig
    from tests.data.servers import range_server

    folder = engine({"path": str(tiny_sd)}, tmp_path / "folder")
    with range_server(tiny_sd) as (url, counter):
        datasets = {"sd": DatasetConfig(source=url, include=[SINGLE_FILE])}
        options = {"dataset": "sd", "checkpoint": SINGLE_FILE, "config": str(tiny_sd / CONFIG_FOLDER)}
        remote = engine(options, tmp_path / "data", datasets)
    assert counter.bytes >= (tiny_sd / SINGLE_FILE).stat().st_size
    remote.model = folder.model
    assert image(remote, tmp_path / "a") == image(folder, tmp_path / "b")


def test_the_checkpoint_is_read_by_swells_loader(tiny_sd: Path, tmp_path: Path) -> None:
    """A hostile header is refused by swell.data's header check (which sizes nothing from it), named
    at the option, rather than reaching diffusers' own reader."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(ConfigError, match="header length") as refused:
        engine({"checkpoint": str(bad), "config": str(tiny_sd / CONFIG_FOLDER)}, tmp_path)
    assert refused.value.key == "options.checkpoint"


def test_a_config_folder_without_model_index_is_named(tiny_sd: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config folder") as refused:
        engine({"checkpoint": str(tiny_sd / SINGLE_FILE), "config": str(tmp_path)}, tmp_path)
    assert refused.value.key == "options.config"
