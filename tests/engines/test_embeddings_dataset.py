"""The embeddings engine on a dataset: the real all-MiniLM-L6-v2 copied to a file:// and an HTTP origin,
fetched into a node cache in a tmp data dir, its weights read once, output equal to plain
sentence-transformers."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from swell.core.errors import ConfigError
from swell.data import DatasetConfig, load_safetensors
from swell.data.cache import open_node_cache
from swell.engines.base import RunContext
from swell.engines.embeddings import EmbeddingsEngine
from swell.engines.registry import create_engine
from tests.data.servers import range_server
from tests.engines.minilm import TEXTS, OpenWatch, copy_minilm, files_of, reference_embeddings


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_minilm(tmp_path_factory.mktemp("origin") / "minilm")


@pytest.fixture(scope="module")
def reference(minilm: Path) -> np.ndarray:
    return reference_embeddings(minilm)


def embed(engine: EmbeddingsEngine, tmp_path: Path) -> np.ndarray:
    [result] = engine.run([{"texts": TEXTS}], RunContext(["j"], tmp_path))
    assert isinstance(result, dict)
    return np.asarray(result["embeddings"])


@pytest.mark.skipif(sys.platform != "linux", reason="counts opens with inotify")
def test_file_dataset_reads_the_weights_once_and_matches(
    minilm: Path, reference: np.ndarray, tmp_path: Path
) -> None:
    datasets = {"minilm": DatasetConfig(source=f"file://{minilm}")}
    engine = create_engine(
        "embeddings", {"dataset": "minilm", "device": "cpu"}, data_dir=tmp_path / "data", datasets=datasets
    )
    assert isinstance(engine, EmbeddingsEngine)
    watch = OpenWatch(minilm / "model.safetensors")
    try:
        load_safetensors(minilm / "model.safetensors")
        one_read = watch.opens()  # what one read through the loader costs
        phases = engine.load()
        opened = watch.opens()
    finally:
        watch.close()
    assert one_read >= 1 and opened == one_read  # a second reader (transformers) would add its own opens
    assert set(phases.to_dict()) == {"fetch", "load", "warmup"} and phases.fetch > 0
    assert engine.model == "minilm"
    assert np.allclose(embed(engine, tmp_path), reference, atol=1e-6)
    engine.unload()


def test_http_dataset_goes_through_the_node_cache(
    minilm: Path, reference: np.ndarray, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    with range_server(minilm) as (url, counter):
        datasets = {"minilm": DatasetConfig(source=url, include=files_of(minilm))}
        engine = EmbeddingsEngine(dataset="minilm", device="cpu", datasets=datasets, data_dir=data_dir)
        phases = engine.load()
    assert counter.bytes >= (minilm / "model.safetensors").stat().st_size
    assert phases.fetch > 0
    [tree] = (data_dir / "cache" / "trees" / "minilm").iterdir()
    assert (tree / "model.safetensors").read_bytes() == (minilm / "model.safetensors").read_bytes()
    assert open_node_cache(data_dir).statistics().bytes_from_origin >= counter.bytes > 0
    assert np.allclose(embed(engine, tmp_path), reference, atol=1e-6)


def test_a_backbone_in_a_folder_of_its_own(minilm: Path, tmp_path: Path) -> None:
    """The older layout: the Transformer module's files in `0_Transformer/`, named by modules.json."""
    model = copy_minilm(tmp_path / "legacy")
    backbone = model / "0_Transformer"
    backbone.mkdir()
    for name in ("config.json", "model.safetensors", "sentence_bert_config.json", "special_tokens_map.json",
                 "tokenizer.json", "tokenizer_config.json", "vocab.txt"):  # fmt: skip
        (model / name).rename(backbone / name)
    modules = json.loads((model / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (model / "modules.json").write_text(json.dumps(modules))
    engine = EmbeddingsEngine(path=str(model), device="cpu")
    engine.load()
    assert np.allclose(embed(engine, tmp_path), reference_embeddings(model), atol=1e-6)

    modules[0]["path"] = "../elsewhere"
    (model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="leaves the model's directory"):
        EmbeddingsEngine(path=str(model), device="cpu").load()


class Trap:
    """Unpickling this writes a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "unpickled"))  # type: ignore[return-value]


def test_pickled_weights_are_refused_unread(minilm: Path, tmp_path: Path) -> None:
    model = copy_minilm(tmp_path / "pickled")
    (model / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(Trap(marker)))
    engine = EmbeddingsEngine(path=str(model), device="cpu")
    with pytest.raises(ConfigError, match="only pickled weights"):
        engine.load()
    assert not marker.exists()
    (model / "pytorch_model.bin").unlink()
    with pytest.raises(ConfigError, match="only safetensors"):
        engine.load()


def test_a_module_folder_with_only_pickles_is_refused(minilm: Path, tmp_path: Path) -> None:
    model = copy_minilm(tmp_path / "dense")
    (model / "1_Pooling" / "pytorch_model.bin").write_bytes(b"not loaded")
    engine = EmbeddingsEngine(path=str(model), device="cpu")
    with pytest.raises(ConfigError, match="pickled weights"):
        engine.load()


def test_dataset_options_are_checked(tmp_path: Path) -> None:
    datasets = {"minilm": DatasetConfig(source="file:///nowhere")}
    with pytest.raises(ConfigError, match="no dataset named 'other'") as caught:
        create_engine("embeddings", {"dataset": "other"}, data_dir=tmp_path, datasets=datasets)
    assert caught.value.key == "options.dataset"
    with pytest.raises(ConfigError, match="not both"):
        create_engine("embeddings", {"dataset": "minilm", "path": "/x"}, data_dir=tmp_path, datasets=datasets)
    with pytest.raises(ConfigError, match="not both"):
        create_engine(
            "embeddings",
            {"dataset": "minilm", "model": "all-MiniLM-L6-v2"},
            data_dir=tmp_path,
            datasets=datasets,
        )
