"""The tiny LM writer: a real transformers folder, loadable offline, through `make_tiny("llm", ...)`."""

from __future__ import annotations

from pathlib import Path

from swell.models.tiny import make_tiny


def test_make_tiny_writes_a_folder_the_auto_classes_load_offline(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_tiny("llm", tmp_path / "llm", seed=3)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)  # no pickle
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    assert model.config.vocab_size == len(tokenizer) and model.num_parameters() < 1_000_000
    text = "héllo wörld, € 🙂 the cat\n"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: any text round-trips
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in model.generation_config.eos_token_id


def test_the_same_seed_writes_the_same_weights(tmp_path: Path) -> None:
    first = make_tiny("llm", tmp_path / "a", seed=1) / "model.safetensors"
    second = make_tiny("llm", tmp_path / "b", seed=1) / "model.safetensors"
    other = make_tiny("llm", tmp_path / "c", seed=2) / "model.safetensors"
    assert first.read_bytes() == second.read_bytes() != other.read_bytes()
