"""The embeddings engine with the real all-MiniLM-L6-v2, loaded once for the module."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from swell.core.errors import ValidationError
from swell.engines.base import LoadTimings, RunContext
from swell.engines.embeddings import EmbeddingsEngine
from swell.engines.registry import create_engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddingsEngine]:
    built = create_engine("embeddings", {"device": "cpu"}, data_dir=tmp_path_factory.mktemp("data"))
    assert isinstance(built, EmbeddingsEngine)
    phases = built.load()
    assert isinstance(phases, LoadTimings) and phases.load > 0 and phases.total >= phases.load
    yield built
    built.unload()


def test_similar_sentences_are_closer(engine: EmbeddingsEngine, tmp_path: Path) -> None:
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    [result] = engine.run([{"texts": texts}], RunContext(["j"], tmp_path))
    assert isinstance(result, dict) and result["dimensions"] == 384 and result["model"] == "all-MiniLM-L6-v2"
    a, b, c = (np.asarray(v) for v in result["embeddings"])
    assert a @ b > a @ c


def test_batch_is_split_back_per_job(engine: EmbeddingsEngine, tmp_path: Path) -> None:
    jobs: list[dict[str, Any]] = [{"texts": ["one", "two"]}, {"texts": []}, {"texts": ["three"]}]
    first, bad, second = engine.run(jobs, RunContext(["a", "b", "c"], tmp_path))
    [alone] = engine.run([{"texts": ["three"]}], RunContext(["d"], tmp_path))
    assert isinstance(first, dict) and len(first["embeddings"]) == 2
    assert isinstance(bad, ValidationError)
    assert isinstance(second, dict) and isinstance(alone, dict)
    assert np.allclose(second["embeddings"][0], alone["embeddings"][0], atol=1e-5)
