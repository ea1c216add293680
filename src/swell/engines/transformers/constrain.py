"""JSON mode in a batched `generate`: a logits processor that keeps chosen rows valid JSON prefixes.

`JsonConstraint` runs before `RowSampler`. For each constrained row it advances the row's
swell.engines.transformers.jsonmode state by the token chosen last step, then looks at candidates in
descending score order and keeps only tokens whose text continues a JSON object and leaves it
completable within the row's remaining `max_tokens` (the shortest completion, plus an end token, must
still fit). A greedy row keeps the first such token (usually one of the first few looked at); a
sampled row keeps the first `top_k` of them (`SAMPLED_CANDIDATES` when it has no top-k), from which
`RowSampler` then draws with its temperature and top-p. Once the object is complete the row may only
end (its end-of-sequence token), so the text is exactly one JSON object.

Every token's text is decoded once per engine (`token_strings`): a check is then a few characters
fed to an immutable state, never a decode. Tokens with no text of their own (special tokens, the
bytes of a character split over tokens) are never chosen in JSON mode, so the text the tokenizer
decodes at the end is the join of the strings checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from swell.engines.transformers import jsonmode
from swell.engines.transformers.streaming import REPLACEMENT, Row

SAMPLED_CANDIDATES = 40  # valid tokens a sampled row without top-k draws from
CHUNK = 64  # candidates taken from the sorted scores at a time


def token_strings(tokenizer: Any, size: int) -> list[str | None]:
    """Each token id's own text (None: a special token, an incomplete character, or no text), for
    ids below `size` (the model's vocabulary, which may be larger than the tokenizer's).

    A token is decoded after an anchor token and the anchor's text removed, so a tokenizer that
    drops the leading space of a sequence's first token (SentencePiece) gives its real text."""
    known = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    anchor = list(tokenizer.encode("a", add_special_tokens=False))[-1:]
    prefix = tokenizer.decode(anchor, clean_up_tokenization_spaces=False) if anchor else ""
    texts = tokenizer.batch_decode(
        [[*anchor, i] for i in range(known)], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    strings: list[str | None] = [None] * size
    for token, text in enumerate(texts[:size]):
        piece = text[len(prefix) :] if text.startswith(prefix) else None
        if token not in special and piece and REPLACEMENT not in piece:
            strings[token] = piece
    return strings


class JsonConstraint(LogitsProcessor):
    """Keeps rows `constrained` of the batch (indices into `rows`) valid JSON objects (module docstring)."""

    def __init__(
        self,
        rows: Sequence[Row],
        constrained: Sequence[int],
        strings: Sequence[str | None],
        end: int,
        keep: Sequence[int],
    ) -> None:
        self.rows = list(rows)
        self.constrained = list(constrained)
        self.strings = strings
        self.end = end  # the end-of-sequence token a complete object is ended with
        self.keep = dict(zip(constrained, keep, strict=True))  # row -> candidates kept (1: greedy)
        self.states: dict[int, jsonmode.State | None] = dict.fromkeys(constrained, jsonmode.INITIAL)
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        last = input_ids[:, -1].tolist() if self.started else None
        self.started = True
        masked = scores
        for index in self.constrained:
            row = self.rows[index]
            if row.done:
                continue
            if last is not None:
                self.states[index] = jsonmode.feed(self.states[index], self.strings[last[index]] or "\0")
            allowed = self._allowed(self.states[index], scores[index], row.max_tokens - row.tokens, index)
            if allowed is not None:
                if masked is scores:
                    masked = scores.clone()  # type: ignore[assignment]
                keep = torch.full_like(scores[index], -float("inf"))
                picked = torch.tensor(allowed, device=scores.device)
                keep[picked] = scores[index, picked]
                masked[index] = keep
        return masked

    def _allowed(
        self, state: jsonmode.State | None, scores: torch.Tensor, remaining: int, index: int
    ) -> list[int] | None:
        """The tokens row `index` may take now (None: leave it alone; its state broke, which only a
        token that bypassed this processor could do)."""
        if state is None:
            return None
        if jsonmode.complete(state):
            return [self.end]
        wanted = self.keep[index]
        found: list[int] = []
        fallback: tuple[int, int] | None = None  # (needed, token): the best when nothing fits the budget
        for token in _descending(scores):
            text = self.strings[token] if token < len(self.strings) else None
            after = jsonmode.feed(state, text) if text else None
            if after is None:
                continue
            need = jsonmode.needed(after) + 1  # its completion, then the end token
            if need <= remaining - 1:
                found.append(token)
                if len(found) >= wanted:
                    break
            elif fallback is None or need < fallback[0]:
                fallback = (need, token)
        if not found and fallback is not None:
            found = [fallback[1]]
        return found or [self.end]


def _descending(scores: torch.Tensor) -> Any:
    """Token ids from the highest score down: the first `CHUNK` from a top-k, then the rest sorted."""
    size = scores.shape[-1]
    first = scores.topk(min(CHUNK, size)).indices.tolist()
    yield from first
    if size > CHUNK:
        order = scores.argsort(descending=True).tolist()
        yield from order[CHUNK:]
