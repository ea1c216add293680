"""Tiny, randomly initialised models in the real on-disk layouts, built locally, downloading nothing.

Their outputs are noise: they exist so that tests and CPU demos run the real engines (the real
diffusers and transformers code paths, the real loaders and file layouts) in well under a second
per job. Never present what they generate as a model's quality.

Kinds (`KINDS`: a table of import strings, so that this module imports no torch):
- `sd`: a Stable Diffusion 1.x-shaped diffusers folder (UNet2DConditionModel, AutoencoderKL with the
  real 8x latent factor, CLIPTextModel and a CLIPTokenizer built from an in-memory byte-level vocab,
  a PNDM scheduler config as SD 1.5 ships it, no safety checker);
- `controlnet`: a ControlNetModel folder that fits the `sd` UNet;
- `lora`: PEFT LoRA safetensors files (diffusers' `pytorch_lora_weights` key layout) for that UNet;
- `llm`: a causal LM with a locally built tokenizer and a chat template (swell.models.tiny_llm).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swell.core.errors import ConfigError, MissingExtra

KINDS: dict[str, str] = {
    "sd": "swell.models.tiny:write_sd",
    "controlnet": "swell.models.tiny:write_controlnet",
    "lora": "swell.models.tiny:write_lora",
    "llm": "swell.models.tiny_llm:write_llm",
}
EXTRAS = {"sd": "diffusers", "controlnet": "diffusers", "lora": "diffusers", "llm": "transformers"}

# One tiny SD 1.x geometry, shared by every kind so that a ControlNet and a LoRA fit the UNet.
UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 16,
}
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (16, 16, 32, 32),  # four blocks: the 8x latent factor of SD 1.x
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}
TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 77,
    "projection_dim": 32,
}
SCHEDULER: dict[str, Any] = {  # as stable-diffusion-v1-5 ships its scheduler_config.json
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "set_alpha_to_one": False,
}
CONTROLNET_CONDITIONING = (16, 32, 64, 64)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_RANK = 4
WORDS = ("a", "an", "the", "cat", "dog", "red", "blue", "photo", "of", "on", "in", "art", "tiny", "model")


def make_tiny(kind: str, directory: str | Path, *, seed: int = 0, **params: Any) -> Path:
    """Write a tiny random model of `kind` (sd, controlnet, lora, llm) into `directory`; returns the
    path a service points at (the folder, or for `lora` the folder holding the adapter files)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})", key="--kind")
    module, _, attr = KINDS[kind].partition(":")
    try:
        writer: Callable[..., Path] = getattr(importlib.import_module(module), attr)
        return writer(Path(directory), seed=seed, **params)
    except ImportError as exc:
        raise MissingExtra(f"a tiny {kind} model", EXTRAS[kind]) from exc


SINGLE_FILE = "tiny-sd.safetensors"
CONFIG_FOLDER = "config"


def write_sd(directory: Path, *, seed: int = 0, single_file: bool = False) -> Path:
    """A Stable Diffusion 1.x-layout diffusers folder (model_index.json, unet/, vae/, text_encoder/,
    tokenizer/, scheduler/) of random weights, safetensors only.

    With `single_file`, also the same weights as one original-layout checkpoint
    `DIRECTORY/tiny-sd.safetensors` (swell.models.single_file) and `DIRECTORY/config/`, the folder's
    configs, tokenizer and scheduler without weights: what a service's `checkpoint` and `config`
    options name for an A1111-style single file."""
    _write_sd_folder(directory, seed)
    if single_file:
        from swell.models.single_file import write_single_file

        write_single_file(directory, directory / SINGLE_FILE)
        _copy_configs(directory, directory / CONFIG_FOLDER)
    return directory


def _copy_configs(folder: Path, target: Path) -> None:
    """The folder's JSON configs and tokenizer files (everything but weights) into `target`."""
    import shutil

    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and path.suffix != ".safetensors" and relative.parts[0] != target.name:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / relative)


def _write_sd_folder(directory: Path, seed: int) -> None:
    from diffusers import StableDiffusionPipeline

    unet, vae, text_encoder, tokenizer, scheduler = _sd_parts(seed)
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)


def write_controlnet(directory: Path, *, seed: int = 0) -> Path:
    """A ControlNetModel folder (config.json, diffusion_pytorch_model.safetensors) for the tiny UNet."""
    from diffusers import ControlNetModel

    torch = _seeded(seed)
    with torch.no_grad():
        net = ControlNetModel.from_unet(
            _unet(seed), conditioning_embedding_out_channels=CONTROLNET_CONDITIONING
        )
        for param in net.controlnet_cond_embedding.conv_out.parameters():  # zero-initialised: randomise
            param.normal_(0.0, 0.02)
        for block in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            for param in block.parameters():
                param.normal_(0.0, 0.02)
    net.save_pretrained(directory, safe_serialization=True)
    return directory


def write_lora(directory: Path, *, seed: int = 0, count: int = 1) -> Path:
    """`count` LoRA adapters `tiny-<i>.safetensors` (PEFT weights in diffusers' key layout, random
    non-zero B matrices so that each one visibly changes the output) for the tiny UNet."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    if count < 1:
        raise ConfigError("must be at least 1", key="--count")
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        unet = _unet(seed)
        config = LoraConfig(
            r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=LORA_TARGETS, init_lora_weights=False
        )
        _seeded(seed * 1000 + index + 1)
        unet.add_adapter(config)
        layers = get_peft_model_state_dict(unet)
        StableDiffusionPipeline.save_lora_weights(
            directory,
            unet_lora_layers=layers,
            weight_name=f"tiny-{index}.safetensors",
            safe_serialization=True,
        )
    return directory


def _seeded(seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    return torch


def _unet(seed: int) -> Any:
    from diffusers import UNet2DConditionModel

    _seeded(seed)
    return UNet2DConditionModel(**UNET)


def _sd_parts(seed: int) -> tuple[Any, Any, Any, Any, Any]:
    from diffusers import AutoencoderKL, PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = _unet(seed)
    _seeded(seed + 1)
    vae = AutoencoderKL(**VAE)
    tokenizer = clip_tokenizer()
    _seeded(seed + 2)
    ids: dict[str, Any] = {
        f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")
    }
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), **ids, **TEXT)
    text_encoder = CLIPTextModel(text_config)
    return unet, vae, text_encoder, tokenizer, PNDMScheduler(**SCHEDULER)


def clip_tokenizer() -> Any:
    """A CLIP byte-level BPE tokenizer built in memory: every byte alone and word-final, a few merges
    that spell common prompt words, CLIP's two special tokens, 77 positions."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab()
    pairs: Any = merges  # the tokenizers backend takes (left, right) pairs; the stubs say strings
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=77)


def _clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    symbols = list(_byte_symbols())
    tokens = symbols + [f"{s}</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        pieces = list(word)
        pieces[-1] += "</w>"
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            if pieces[0] not in tokens:
                tokens.append(pieces[0])
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}, list(dict.fromkeys(merges))


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table (bytes_to_unicode)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
