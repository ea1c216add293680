"""Per-sequence incremental decoding and stop strings, against the tokenizer's full decode."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swell.engines.transformers.streaming import IncrementalDecoder, Row, StopText, decoder_of

SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def streamed(decode: Any, ids: list[int]) -> list[str]:
    decoder = IncrementalDecoder(decode)
    return [decoder.push(token) for token in ids] + [decoder.flush()]


def sentencepiece_like() -> Any:
    """A Llama-2-style tokenizer (metaspace, byte fallback, the first token's space stripped) built in
    memory: its decode treats the start of a window specially, which the decoder must cope with."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for word in ("▁the", "▁cat", "▁hello", "▁world", "▁", "a", "b", "é", "▁é"):
        vocab.setdefault(word, len(vocab))
    model = models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>")
    backend = Tokenizer(model)
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def spm() -> Any:
    pytest.importorskip("tokenizers")
    return sentencepiece_like()


@SETTINGS
@given(data=st.data())
def test_pieces_join_to_the_full_decode_of_any_ids(tokenizer: Any, data: st.DataObject) -> None:
    """Any ids at all (bytes that split characters, invalid UTF-8, special tokens): no character lost,
    none twice, nothing emitted that a later token changes."""
    ids = data.draw(st.lists(st.integers(0, len(tokenizer) - 1), max_size=40))
    decode = decoder_of(tokenizer)
    pieces = streamed(decode, ids)
    assert "".join(pieces) == decode(ids)


@SETTINGS
@given(text=st.text(max_size=60))
def test_pieces_join_to_the_text_tokenized(tokenizer: Any, text: str) -> None:
    """Real text (any Unicode) through the byte-level tokenizer and back, token by token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = streamed(decoder_of(tokenizer), ids)
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)  # whole characters only


@SETTINGS
@given(texts=st.lists(st.text(max_size=12), max_size=5))
def test_sentencepiece_style_decoders_keep_their_spaces(spm: Any, texts: list[str]) -> None:
    """Valid text only: a byte-fallback decoder turns a whole run of byte tokens into U+FFFD once
    an invalid byte joins it, which no streamer can foresee; valid UTF-8 always streams exactly."""
    ids = [i for text in texts for i in spm(text, add_special_tokens=False)["input_ids"]]
    decode = decoder_of(spm)
    assert "".join(streamed(decode, ids)) == decode(ids)


def test_a_character_split_over_tokens_comes_out_whole(tokenizer: Any) -> None:
    ids = tokenizer("€🙂", add_special_tokens=False)["input_ids"]
    assert len(ids) == 4  # "€" and "🙂" each end in a token of their last byte alone
    assert [p for p in streamed(decoder_of(tokenizer), ids) if p] == ["€", "🙂"]


def reference_cut(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the stop string that completes first (at one end, the longest)."""
    hits = [(i + len(s), i) for s in stops if (i := text.find(s)) >= 0]
    return (text[: min(hits)[1]], True) if hits else (text, False)


@settings(max_examples=500, deadline=None)
@given(
    pieces=st.lists(st.text(alphabet="abc", max_size=4), max_size=12),
    stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=4), max_size=3),
)
def test_stop_text_cuts_before_the_first_stop_even_across_pieces(pieces: list[str], stops: list[str]) -> None:
    stop = StopText(tuple(stops))
    out = [stop.feed(piece) for piece in pieces] + [stop.flush()]
    expected, stopped = reference_cut("".join(pieces), tuple(stops))
    assert stop.text == expected and stop.stopped == stopped
    assert "".join(out) == expected
    streamed_so_far = ""
    for piece in out[:-1]:  # nothing streamed is ever taken back by a later stop string
        streamed_so_far += piece
        assert expected.startswith(streamed_so_far)


def test_a_row_ends_on_eos_length_or_cancel(tokenizer: Any) -> None:
    decode = decoder_of(tokenizer)
    ids = tokenizer(" hello world", add_special_tokens=False)["input_ids"]
    eos = frozenset({tokenizer.eos_token_id})

    row = Row("j", 0, 10, IncrementalDecoder(decode), StopText(), eos=eos)
    for token in [*ids, tokenizer.eos_token_id, *ids]:
        row.push(token)
    assert (row.choice()["text"], row.finish, row.tokens) == (" hello world", "stop", len(ids) + 1)

    row = Row("j", 0, 1, IncrementalDecoder(decode), StopText(), eos=eos)
    row.push(ids[0])
    assert (row.choice()["text"], row.finish, row.take()) == (" hello", "length", " hello")

    row = Row("j", 0, 10, IncrementalDecoder(decode), StopText((" world!",)), eos=eos)
    for token in ids:
        row.push(token)
    assert row.take() == " hello"  # " world" could begin the stop string: held back
    row.end("cancelled")
    assert (row.finish, row.take(), row.choice()["text"]) == ("cancelled", " world", " hello world")
