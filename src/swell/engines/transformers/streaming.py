"""Per-sequence streaming for a batched `generate`: incremental decoding, stop strings, one row's state.

transformers' `TextIteratorStreamer` follows a batch of one. Here each sequence of a batch has its
own `IncrementalDecoder` (token ids in, text out, never half a UTF-8 character, never a character
twice or lost: the joined pieces equal decoding all the ids at once), a `StopText` (text cut before
the first stop string, even one spanning tokens, and nothing streamed that a stop string could still
swallow) and a `Row` that ties them to a job: how many tokens it made and why it ended.

Pure Python over a tokenizer's `decode`: no torch, testable on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

REPLACEMENT = "\ufffd"  # what decoding an incomplete UTF-8 sequence ends with
FinishReason = Literal["stop", "length", "cancelled"]


MEMO_TOKENS = 2  # windows of at most this many tokens are remembered (most windows of a stream)
MEMO_ENTRIES = 1 << 16  # then the memo starts over: bounded memory however long the engine lives


def decoder_of(tokenizer: Any) -> Callable[[Sequence[int]], str]:
    """`tokenizer.decode` as the streamers call it: special tokens skipped, spaces left as they are.

    Streaming decodes two short windows per token per sequence, and a call into the tokenizer costs
    tens of microseconds of Python, as much as a small model's step per sequence: windows of one or
    two tokens (nearly all of them) are remembered, since a decode depends on its ids alone."""
    memo: dict[tuple[int, ...], str] = {}

    def decode(ids: Sequence[int]) -> str:
        key = tuple(ids) if len(ids) <= MEMO_TOKENS else None
        if key is not None and (known := memo.get(key)) is not None:
            return known
        text: str = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if key is not None:
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            memo[key] = text
        return text

    return decode


class IncrementalDecoder:
    """Decodes one sequence token by token.

    Each step decodes two short windows that start at the same token (the one where the previous
    piece began) and emits their difference, so a tokenizer that treats the first token of a decode
    specially (SentencePiece drops its leading space) is treated alike in both. A window ending in
    U+FFFD (an incomplete UTF-8 character) emits nothing until the character completes; `flush`
    emits whatever is left, so the joined pieces always equal `decode(all ids)`.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0  # where the windows start: the first token of the last emitted piece
        self.read = 0  # the tokens before this are emitted

    def push(self, token: int) -> str:
        """Add one token; the text it completes ("" while a character is still incomplete)."""
        self.ids.append(token)
        before, now = self._windows()
        if len(now) > len(before) and not now.endswith(REPLACEMENT):
            return self._advance(now[len(before) :])
        return ""

    def flush(self) -> str:
        """The text not yet emitted (an incomplete character as U+FFFD): the sequence ended."""
        before, now = self._windows()
        return self._advance(now[len(before) :]) if len(self.ids) > self.read else ""

    def _windows(self) -> tuple[str, str]:
        return self.decode(self.ids[self.prefix : self.read]), self.decode(self.ids[self.prefix :])

    def _advance(self, piece: str) -> str:
        self.prefix, self.read = self.read, len(self.ids)
        return piece


@dataclass
class StopText:
    """A sequence's text, cut before the first of its stop strings to complete.

    `feed(piece)` returns the text that is now safe to stream: everything except a tail that is
    the beginning of a stop string (it may yet complete one). Once a stop string is found, `stopped`
    is true, `text` ends before it, and later pieces are ignored.
    """

    stops: tuple[str, ...] = ()
    text: str = ""
    sent: int = 0  # characters of `text` already returned
    stopped: bool = False

    def feed(self, piece: str) -> str:
        """Add decoded text; the part of `text` that is now safe to stream."""
        if self.stopped or not piece:
            return ""
        longest = max((len(s) for s in self.stops), default=0)
        start = max(0, len(self.text) - longest + 1)  # a new match must end in the new piece
        self.text += piece
        hit = self._first_stop(start)
        if hit is not None:
            self.text, self.stopped = self.text[:hit], True
            return self._send(len(self.text))
        return self._send(len(self.text) - self._held())

    def flush(self) -> str:
        """The held-back tail: the sequence ended without completing a stop string."""
        return self._send(len(self.text))

    def _first_stop(self, start: int) -> int | None:
        """Where the stop string that completes first begins (the earliest end; at one end, the
        longest): what a stream that stops as soon as one completes cuts at, however the text was
        split into pieces."""
        found = [(i + len(s), i) for s in self.stops if (i := self.text.find(s, start)) >= 0]
        return min(found)[1] if found else None

    def _held(self) -> int:
        """The length of the longest tail of `text` that begins some stop string."""
        held = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop[:size]):
                    held = size
                    break
        return held

    def _send(self, end: int) -> str:
        piece = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return piece


@dataclass
class Row:
    """One sequence of a batched call: its job, limits, text and why it ended (None: still running)."""

    job_id: str
    index: int  # which of the job's `n` completions
    max_tokens: int
    decoder: IncrementalDecoder
    text: StopText
    eos: frozenset[int] = frozenset()
    tokens: int = 0  # generated so far, the one that ended it (an end-of-sequence token) included
    finish: FinishReason | None = None
    out: list[str] = field(default_factory=list)  # streamed pieces not yet taken by `take`

    @property
    def done(self) -> bool:
        return self.finish is not None

    def push(self, token: int) -> None:
        """One generated token: decode it, look for stop strings, end on EOS or at `max_tokens`."""
        if self.done:
            return
        self.tokens += 1
        if token in self.eos:
            self.end("stop")
            return
        self._emit(self.text.feed(self.decoder.push(token)))
        if self.text.stopped:
            self.finish = "stop"
        elif self.tokens >= self.max_tokens:
            self.end("length")

    def end(self, reason: FinishReason) -> None:
        """End the row now (EOS, length, cancel): what the decoder and stop text held is released."""
        if self.done:
            return
        self._emit(self.text.feed(self.decoder.flush()))
        self._emit(self.text.flush())
        self.finish = "stop" if self.text.stopped else reason

    def take(self) -> str:
        """The text streamed since the last `take`."""
        piece, self.out = "".join(self.out), []
        return piece

    def choice(self) -> dict[str, Any]:
        """This row as one of its job's `choices`."""
        return {"index": self.index, "text": self.text.text, "finish_reason": self.finish or "length"}

    def _emit(self, piece: str) -> None:
        if piece:
            self.out.append(piece)


def rows_for(
    job_id: str,
    n: int,
    *,
    max_tokens: int,
    stops: Iterable[str],
    decode: Callable[[Sequence[int]], str],
    eos: frozenset[int],
) -> list[Row]:
    """The `n` rows of one job."""
    stop_tuple = tuple(stops)
    return [
        Row(job_id, i, max_tokens, IncrementalDecoder(decode), StopText(stop_tuple), eos=eos)
        for i in range(n)
    ]
