"""`swell models make-tiny`: tiny random models in the real layouts, loadable by the real libraries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from swell.models.cli import app

pytest.importorskip("diffusers")


def test_make_tiny_writes_real_layouts_that_load(tmp_path: Path) -> None:
    from diffusers import ControlNetModel, StableDiffusionPipeline
    from safetensors import safe_open

    runner = CliRunner()
    for kind, extra in (("sd", []), ("controlnet", []), ("lora", ["--count", "2"])):
        result = runner.invoke(app, ["make-tiny", "--kind", kind, *extra, str(tmp_path / kind)])
        assert result.exit_code == 0, result.output
        assert "noise" in result.output
    index = json.loads((tmp_path / "sd" / "model_index.json").read_text())
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd", local_files_only=True)
    assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8  # SD 1.x's latent factor
    assert pipe.tokenizer("a photo of a cat").input_ids[0] == pipe.tokenizer.bos_token_id
    net = ControlNetModel.from_pretrained(tmp_path / "controlnet")
    assert net.config.cross_attention_dim == pipe.unet.config.cross_attention_dim
    files = sorted(p.name for p in (tmp_path / "lora").iterdir())
    assert files == ["tiny-0.safetensors", "tiny-1.safetensors"]
    with safe_open(tmp_path / "lora" / files[0], "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("unet.") and ".lora_" in k for k in keys)


def test_the_help_says_outputs_are_noise_and_unknown_kinds_are_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    assert "noise" in runner.invoke(app, ["make-tiny", "--help"]).output
    refused = runner.invoke(app, ["make-tiny", "--kind", "gan", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "unknown kind" in refused.output
    assert not (tmp_path / "x").exists()


def test_single_file_writes_an_original_layout_checkpoint_and_a_config_folder(tmp_path: Path) -> None:
    from safetensors import safe_open

    result = CliRunner().invoke(app, ["make-tiny", "--kind", "sd", "--single-file", str(tmp_path / "sd")])
    assert result.exit_code == 0, result.output
    with safe_open(tmp_path / "sd" / "tiny-sd.safetensors", "pt") as f:
        keys = set(f.keys())
    prefixes = {key.split(".", 1)[0] for key in keys}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}  # CompVis / A1111 layout
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert (tmp_path / "sd" / "config" / "model_index.json").is_file()
    assert not list((tmp_path / "sd" / "config").rglob("*.safetensors"))


def test_llm_shape_options(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    args = ["make-tiny", "--kind", "llm", "--hidden-size", "32", "--layers", "1", "--context", "48"]
    result = CliRunner().invoke(app, [*args, str(tmp_path / "llm")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "llm" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["max_position_embeddings"]) == (
        32,
        1,
        48,
    )
    refused = CliRunner().invoke(
        app, ["make-tiny", "--kind", "llm", "--hidden-size", "30", str(tmp_path / "x")]
    )
    assert refused.exit_code == 2 and "--hidden-size" in refused.output
