"""Each sequence of one batched `generate` sampled with its own temperature, top-k, top-p and seed.

`generate` applies one set of sampling parameters, and one random stream, to a whole batch: a job's
completion would then depend on which other jobs shared its call. `RowSampler` is a logits processor
run with `do_sample=False`: for every sampled row it draws the token itself, from the row's own
generator, and leaves that token the only finite score, so generate's argmax picks it; greedy rows
(temperature 0) pass through untouched. A row's generator draws one number per step whatever the
other rows do, so the same seed and input give the same text alone or in any batch (up to the tiny
numeric differences a batch's padding can make on a GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

SEED_STRIDE = 0x9E3779B97F4A7C15  # the golden-ratio increment: well-spread seeds for a job's later rows
SEED_MASK = 2**63 - 1


def row_seed(seed: int, index: int) -> int:
    """The seed of a job's `index`th completion: the job's seed for the first, spread for the others."""
    return (seed + index * SEED_STRIDE) & SEED_MASK


@dataclass(frozen=True)
class Sampling:
    """How one row picks its tokens."""

    temperature: float  # 0: greedy
    top_k: int  # 0: no cut
    top_p: float  # 1: no cut
    seed: int


class RowSampler(LogitsProcessor):
    """Draws every sampled row's next token from its own distribution and generator."""

    def __init__(self, rows: Sequence[Sampling]) -> None:
        self.sampled = [i for i, row in enumerate(rows) if row.temperature > 0]
        picked = [rows[i] for i in self.sampled]
        self.temperature = torch.tensor([[row.temperature] for row in picked], dtype=torch.float32)
        self.top_k = torch.tensor([[row.top_k] for row in picked], dtype=torch.long)
        self.top_p = torch.tensor([[row.top_p] for row in picked], dtype=torch.float32)
        self.generators = [torch.Generator().manual_seed(row.seed) for row in picked]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.sampled:
            return scores
        index = torch.tensor(self.sampled, device=scores.device)
        tokens = self._draw(scores.index_select(0, index).float())
        chosen = torch.full_like(scores, -float("inf"))
        chosen[index, tokens] = 0.0
        keep = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device)
        keep[index] = False
        return torch.where(keep[:, None], scores, chosen)  # type: ignore[return-value]

    def _draw(self, scores: torch.Tensor) -> torch.Tensor:
        """One token per sampled row: temperature, then top-k and top-p on the sorted scores, then an
        inverse-CDF draw with the row's uniform number."""
        device = scores.device
        self._to(device)
        ordered, order = (scores / self.temperature).sort(dim=-1, descending=True)
        ranks = torch.arange(ordered.shape[-1], device=device)[None, :]
        ordered = ordered.masked_fill((self.top_k > 0) & (ranks >= self.top_k), -float("inf"))
        probs = ordered.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # the mass of the tokens ranked above each one
        probs = probs.masked_fill((self.top_p < 1.0) & (before > self.top_p), 0.0)
        cdf = probs.cumsum(dim=-1)
        uniform = torch.stack([torch.rand((), generator=g) for g in self.generators]).to(device)
        picks = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)
        picks = picks.clamp(max=ordered.shape[-1] - 1)
        return order.gather(1, picks).squeeze(1)

    def _to(self, device: torch.device) -> None:
        """The per-row parameters on the scores' device, moved once."""
        if self.temperature.device != device:
            self.temperature, self.top_k, self.top_p = (
                t.to(device) for t in (self.temperature, self.top_k, self.top_p)
            )
