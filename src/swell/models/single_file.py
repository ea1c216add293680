"""A diffusers SD 1.x folder written back as one original-layout (CompVis/A1111) checkpoint.

The key mapping is diffusers' own `scripts/convert_diffusers_to_original_stable_diffusion.py`
(UNet, VAE and CLIP text encoder), generalised from SD 1.5's fixed geometry (four blocks of two
layers) to any `layers_per_block` and block count, so the tiny model's UNet (two blocks of one
layer) maps too: the original layout numbers `input_blocks`/`output_blocks` by position, which
follows from the config. The result is what `StableDiffusionPipeline.from_single_file` reads with
a local `config=` folder; the tests load it back and compare images with the folder's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

UNET_TOP = [  # (original, diffusers)
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("input_blocks.0.0.", "conv_in."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
]
UNET_RESNET = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]
VAE_RESNET_ATTN = [
    ("nin_shortcut", "conv_shortcut"),
    ("norm_out", "conv_norm_out"),
    ("mid.attn_1.", "mid_block.attentions.0."),
]
VAE_ATTN = [
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
]


def unet_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(original, diffusers) prefixes of the UNet's blocks for its config."""
    layers = int(config["layers_per_block"])
    blocks = len(config["down_block_types"])
    down_attn = ["CrossAttn" in kind for kind in config["down_block_types"]]
    up_attn = ["CrossAttn" in kind for kind in config["up_block_types"]]
    step = layers + 1  # original blocks per diffusers block: its layers, then its down/upsampler
    pairs: list[tuple[str, str]] = []
    for i in range(blocks):
        for j in range(layers):
            block = f"input_blocks.{step * i + j + 1}"
            pairs.append((f"{block}.0.", f"down_blocks.{i}.resnets.{j}."))
            if down_attn[i]:
                pairs.append((f"{block}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(layers + 1):
            block = f"output_blocks.{step * i + j}"
            pairs.append((f"{block}.0.", f"up_blocks.{i}.resnets.{j}."))
            if up_attn[i]:
                pairs.append((f"{block}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < blocks - 1:
            pairs.append((f"input_blocks.{step * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            upsample = f"output_blocks.{step * i + layers}.{2 if up_attn[i] else 1}."
            pairs.append((upsample, f"up_blocks.{i}.upsamplers.0."))
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    pairs += [(f"middle_block.{2 * j}.", f"mid_block.resnets.{j}.") for j in range(2)]
    return pairs


def unet_state(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel state dict in the original layout (`model.diffusion_model.`)."""
    prefixes = unet_prefixes(config)
    out = {}
    for key, value in state.items():
        name = key
        for original, ours in UNET_TOP:
            if name.startswith(ours):
                name = original + name[len(ours) :]
        if "resnets" in name:
            for original, ours in UNET_RESNET:
                name = name.replace(ours, original)
        for original, ours in prefixes:
            name = name.replace(ours, original)
        out[f"model.diffusion_model.{name}"] = value
    return out


def vae_state(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers AutoencoderKL state dict in the original layout (`first_stage_model.`); the mid
    block's attention projections as the 1x1 convolutions the original has."""
    layers = int(config["layers_per_block"])
    blocks = len(config["down_block_types"])
    pairs = list(VAE_RESNET_ATTN)
    for i in range(blocks):
        pairs += [
            (f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.") for j in range(layers)
        ]
        if i < blocks - 1:
            pairs.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            pairs.append((f"up.{blocks - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        pairs += [
            (f"decoder.up.{blocks - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}.")
            for j in range(layers + 1)
        ]
    pairs += [(f"mid.block_{i + 1}.", f"mid_block.resnets.{i}.") for i in range(2)]
    out = {}
    for key, value in state.items():
        name = key
        for original, ours in pairs:
            name = name.replace(ours, original)
        if "attentions" in key:
            for original, ours in VAE_ATTN:
                name = name.replace(ours, original)
            if name.rsplit(".", 2)[-2] in ("q", "k", "v", "proj_out") and name.endswith("weight"):
                value = value.reshape(*value.shape, 1, 1)
        out[f"first_stage_model.{name}"] = value
    return out


def text_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A CLIPTextModel state dict as SD 1.x checkpoints hold it (`cond_stage_model.transformer.text_model.`;
    transformers may save the keys without `text_model.`)."""
    prefix = "cond_stage_model.transformer."
    return {
        prefix + (key if key.startswith("text_model.") else f"text_model.{key}"): value
        for key, value in state.items()
    }


def write_single_file(folder: Path, target: Path) -> Path:
    """The SD 1.x diffusers `folder` (safetensors weights) as one original-layout `.safetensors` file."""
    import json

    from safetensors.torch import load_file, save_file

    def part(name: str, weights: str) -> tuple[dict[str, Any], dict[str, Any]]:
        config = json.loads((folder / name / "config.json").read_text())
        return load_file(str(folder / name / weights)), config

    unet, unet_config = part("unet", "diffusion_pytorch_model.safetensors")
    vae, vae_config = part("vae", "diffusion_pytorch_model.safetensors")
    text, _ = part("text_encoder", "model.safetensors")
    state = {**unet_state(unet, unet_config), **vae_state(vae, vae_config), **text_state(text)}
    save_file({key: value.contiguous() for key, value in state.items()}, str(target))
    return target
