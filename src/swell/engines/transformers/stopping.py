"""The per-step hook of a batched `generate`: feed each row its token, stream, stop and cancel rows.

`BatchStopper` is a `StoppingCriteria`: `generate` calls it once per step with every row's ids, the
new token last, and ends a row when it returns true for it (the others go on; a finished row gets
pad tokens, which its `Row` ignores). Each call it pushes the new tokens into the rows
(swell.engines.transformers.streaming), ends the rows of cancelled jobs, sends each job's new text
(`context.delta`, each completion's with its index) and its progress
(tokens / max_tokens, once per percent), and hands a job whose rows have all ended to `finished`,
so its result is reported while the rest of the batch still runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import StoppingCriteria

from swell.engines.base import RunContext
from swell.engines.transformers.streaming import Row


class BatchStopper(StoppingCriteria):
    """Drives the `rows` of one call (row i is row i of the batch)."""

    def __init__(self, rows: Sequence[Row], context: RunContext, finished: Callable[[str], None]) -> None:
        self.rows = list(rows)
        self.context = context
        self.finished = finished
        self.jobs: dict[str, list[Row]] = {}
        for row in self.rows:
            self.jobs.setdefault(row.job_id, []).append(row)
        self.percent = dict.fromkeys(self.jobs, -1)
        self.open = set(self.jobs)  # jobs not yet handed to `finished`

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object
    ) -> torch.BoolTensor:
        self.step([int(t) for t in input_ids[:, -1].tolist()])
        done = torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)
        return done  # type: ignore[return-value]

    def step(self, tokens: Sequence[int]) -> None:
        """One decoding step: `tokens[i]` is row i's new token."""
        cancelled = {job for job in self.open if self.context.cancelled(job)}
        for row, token in zip(self.rows, tokens, strict=True):
            if row.job_id in cancelled:
                row.end("cancelled")
            else:
                row.push(token)
        for job in sorted(self.open):
            self._signal(job)

    def end(self) -> None:
        """`generate` returned: end every row still open (it reached its length) and hand in its job."""
        for row in self.rows:
            row.end("length")
        for job in sorted(self.open):
            self._signal(job)

    def _signal(self, job: str) -> None:
        rows = self.jobs[job]
        for row in rows:
            if row.out:
                self.context.delta(job, row.take(), index=row.index)
        fraction = sum(1.0 if r.done else r.tokens / r.max_tokens for r in rows) / len(rows)
        if int(fraction * 100) > self.percent[job]:
            self.percent[job] = int(fraction * 100)
            self.context.progress(job, fraction)
        if all(row.done for row in rows):
            self.open.discard(job)
            self.finished(job)
