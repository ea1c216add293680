"""Build a SentenceTransformer whose backbone weights are already in memory, so they are read once.

`SentenceTransformer(directory)` has transformers read `model.safetensors` itself. Here the weights come
from `swell.data.load_safetensors`, and the model is built from the directory with its Transformer
module's class swapped, as sentence-transformers reads `modules.json`, for one whose backbone is made by
`from_pretrained(None, config=config, state_dict=state)`: transformers' own path for "a config and a
state dict", which builds the skeleton without weights, takes the tensors from `state` (no copy when
the dtypes match) and reports missing, unexpected and mismatched keys, all refused here. Everything
else (tokenizer, pooling, normalisation, prompts) loads as sentence-transformers loads it.

Supported: one Transformer module, at the directory's root (the usual layout) or in a folder of its
own (`0_Transformer/`, the older one), whose backbone is a torch encoder (not encoder-decoder, not
remote code, not PEFT). Anything else is refused with a clear error, never loaded
the slow way. Nothing is unpickled: a module folder with only `pytorch_model.bin` is refused.

Imports sentence-transformers and transformers: import this module only when loading.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules.transformer import Transformer
from transformers import MODEL_MAPPING, PretrainedConfig, PreTrainedModel

from swell.core.errors import ConfigError, EngineError

WEIGHTS = "model.safetensors"
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class PreloadedTransformer(Transformer):
    """A Transformer module whose backbone takes its weights from `state` (set on a subclass)."""

    state: dict[str, torch.Tensor]
    built: list[PreTrainedModel]

    def _load_model(
        self,
        model_name_or_path: str,
        transformer_task: str,
        config: PretrainedConfig,
        backend: str,
        is_peft_model: bool,
        **model_kwargs: Any,
    ) -> PreTrainedModel:
        _check_backbone(config, transformer_task, backend, is_peft_model)
        model_class = _model_class(config)
        loaded: Any = model_class.from_pretrained(
            None, config=config, state_dict=self.state, output_loading_info=True, **model_kwargs
        )
        model, info = loaded
        _check_keys(info)
        self.built.append(model)
        return model


def build(directory: Path, state: dict[str, torch.Tensor], device: str) -> SentenceTransformer:
    """The SentenceTransformer in `directory`, its backbone's weights taken from `state`."""
    class_ref, _ = transformer_module(directory)
    loader = getattr(SentenceTransformer, "_load_with_module_classes", None)
    if loader is None:
        raise EngineError("this sentence-transformers cannot take preloaded weights; the engine needs 6.x")
    built: list[PreTrainedModel] = []
    module = type("PreloadedTransformer", (PreloadedTransformer,), {"state": state, "built": built})
    model: SentenceTransformer = loader(
        str(directory), {class_ref: module}, device=device, local_files_only=True
    )
    if len(built) != 1:  # sentence-transformers went round the swapped class: refuse a second read
        raise EngineError(f"{directory}: the backbone was not built from the preloaded weights")
    return model


def transformer_module(directory: Path) -> tuple[str, Path]:
    """The `modules.json` type of the model's one Transformer module, and its folder (in `directory`)."""
    file = directory / "modules.json"
    if not file.is_file():
        raise ConfigError(
            f"{directory} is not a sentence-transformers model (no modules.json)", key="options"
        )
    modules = json.loads(file.read_text())
    for entry in modules:
        _refuse_pickles(directory / entry.get("path", ""))
    found = [m for m in modules if _is_transformer(m.get("type", ""))]
    if len(found) != 1:
        raise EngineError(f"{file}: one Transformer module is supported, not {len(found)}")
    folder = (directory / found[0].get("path", "")).resolve()
    if not folder.is_relative_to(directory.resolve()):
        raise ConfigError(
            f"{file}: the Transformer module's path leaves the model's directory", key="options"
        )
    return str(found[0]["type"]), folder


def _refuse_pickles(folder: Path) -> None:
    if not (folder / WEIGHTS).exists() and any((folder / name).exists() for name in PICKLES):
        message = f"{folder} holds only pickled weights (pytorch_model.bin); convert them to safetensors"
        raise ConfigError(message, key="options")


def _is_transformer(class_ref: str) -> bool:
    if not class_ref.startswith("sentence_transformers."):
        return False
    module, _, name = class_ref.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None) is Transformer
    except ImportError:
        return False


def _check_backbone(config: PretrainedConfig, task: str, backend: str, is_peft: bool) -> None:
    if backend != "torch" or is_peft or task != "feature-extraction":
        raise EngineError(
            f"preloaded weights need a torch feature-extraction model, not {backend}/{task}"
            + (" (PEFT)" if is_peft else "")
        )
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "auto_map", None):
        raise EngineError(f"{config.model_type}: encoder-decoder or remote-code backbones are not supported")


def _model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The class `AutoModel` would build for `config` (by its `architectures` when it has several)."""
    try:
        found: Any = MODEL_MAPPING[type(config)]
    except KeyError:
        raise EngineError(f"no transformers model for {type(config).__name__}") from None
    if not isinstance(found, tuple | list):
        return found  # type: ignore[no-any-return]
    names = set(getattr(config, "architectures", None) or ())
    return next((c for c in found if c.__name__ in names), found[0])  # type: ignore[no-any-return]


def _check_keys(info: dict[str, Any]) -> None:
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(kind):
            sample = sorted(map(str, info[kind]))[:3]
            raise EngineError(f"the weights do not fit the model: {kind.replace('_', ' ')}, e.g. {sample}")
