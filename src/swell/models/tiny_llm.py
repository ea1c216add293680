"""A tiny, randomly initialised causal LM in the real transformers folder layout, built offline.

Its text is noise. It exists so that tests and CPU demos drive the real `transformers` engine (the
real `AutoModelForCausalLM`/`AutoTokenizer` loaders, chat template, batched `generate`) in a fraction
of a second per job.

The folder holds a Llama-architecture model (two layers, 64 wide, safetensors weights) and a GPT-2
byte-level BPE tokenizer built from an in-memory vocabulary: the 256 byte symbols, merges that spell a
few common words and split some multi-byte characters across tokens (so that streaming decoders meet
partial UTF-8), ChatML's special tokens and a ChatML chat template. `generation_config.json` ends a
sequence at `<|endoftext|>` or `<|im_end|>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
WORDS = (
    "the", "a", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are",
    "hello", "world", "model", "swell", "token", "user", "assistant", "system", "cat", "dog", "tiny",
)  # fmt: skip
SPLIT_CHARACTERS = "é€ü🙂"  # merged up to (not including) their last byte: tokens end mid-character
MODEL: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "initializer_range": 0.2,  # wider than real models: random text that is varied, not one token
    "tie_word_embeddings": True,
}


def write_llm(
    directory: Path,
    *,
    seed: int = 0,
    hidden_size: int | None = None,
    layers: int | None = None,
    context: int | None = None,
) -> Path:
    """Write the tiny LM folder (config.json, model.safetensors, generation_config.json, tokenizer
    files, chat template) into `directory`; returns `directory`.

    `hidden_size` (a multiple of 16; the MLP is twice as wide), `layers` and `context` (the most
    positions) change the shape from MODEL's: a wider, deeper random model makes the model's own
    cost per token realistic in benchmarks, a short context exercises its limits in tests."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    shape = _shape(hidden_size, layers, context)
    tokenizer = tokenizer_(shape["max_position_embeddings"])
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _SPECIAL_IDS.items()}
    eos = [ids["eos"], tokenizer.convert_tokens_to_ids(IM_END)]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=ids["bos"],
        eos_token_id=eos,
        pad_token_id=ids["pad"],
        **shape,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=eos, pad_token_id=ids["pad"]
    )
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def make_tiny_llm(directory: str | Path, *, seed: int = 0, **shape: int | None) -> Path:
    """`write_llm` for a path given as a string (the form tests and demos use)."""
    return write_llm(Path(directory), seed=seed, **shape)


def _shape(hidden_size: int | None, layers: int | None, context: int | None) -> dict[str, Any]:
    """MODEL with the sizes asked for; a ConfigError naming the option when one cannot work."""
    from swell.core.errors import ConfigError

    shape = dict(MODEL)
    if hidden_size is not None:
        if hidden_size < 16 or hidden_size % 16:
            raise ConfigError("must be a positive multiple of 16", key="--hidden-size")
        shape.update(hidden_size=hidden_size, intermediate_size=2 * hidden_size)
    if layers is not None:
        if layers < 1:
            raise ConfigError("must be at least 1", key="--layers")
        shape["num_hidden_layers"] = layers
    if context is not None:
        if context < 8:
            raise ConfigError("must be at least 8", key="--context")
        shape["max_position_embeddings"] = context
    return shape


_SPECIAL_IDS = {"bos": END_OF_TEXT, "eos": END_OF_TEXT, "pad": END_OF_TEXT}


def tokenizer_(context: int = MODEL["max_position_embeddings"]) -> Any:
    """The GPT-2 byte-level BPE tokenizer of the tiny LM, with ChatML tokens and template."""
    from transformers import GPT2Tokenizer

    vocab, pairs = vocabulary()
    merges: Any = pairs  # pairs are what the tokenizers backend takes (the hint says strings)
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, unk_token=END_OF_TEXT, pad_token=END_OF_TEXT)
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = context
    return tokenizer


def vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte symbols, then the merges (and the tokens they make) that spell WORDS, then each word after
    a space (merged last, so that BPE's rank order reaches it), then the first bytes of each of
    SPLIT_CHARACTERS; END_OF_TEXT last."""
    table = byte_symbols()
    tokens = list(table)
    merges: list[tuple[str, str]] = []
    spellings = [[table[b] for b in word.encode()] for word in WORDS]
    spellings += [[table[ord(" ")], "".join(table[b] for b in word.encode())] for word in WORDS]
    spellings += [[table[b] for b in char.encode()[:-1]] for char in SPLIT_CHARACTERS]
    for pieces in spellings:
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            tokens.append(pieces[0])
    tokens.append(END_OF_TEXT)
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}, list(dict.fromkeys(merges))


def byte_symbols() -> list[str]:
    """GPT-2's reversible byte -> printable character table (`bytes_to_unicode`), indexed by byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
