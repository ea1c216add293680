"""An engine that streams several completions per job, as an LLM does for `n` > 1, named by import
string in real worker processes (`tests.worker.choices:ChoicesEngine`)."""

from __future__ import annotations

import time
from typing import Any

from swell.engines.base import RunContext


def piece(index: int, step: int) -> str:
    """Step `step` of completion `index`: each completion's text is its own."""
    return f"{index}.{step} "


class ChoicesEngine:
    """For each input, `n` completions of `steps` pieces, interleaved step by step (`sleep` seconds
    apart), every piece handed in with its completion's index; the result has each one whole."""

    model: str | None = None
    batches = True

    def load(self) -> dict[str, float]:
        return {"fetch": 0.0, "load": 0.0, "warmup": 0.0}

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        results: list[dict[str, Any] | Exception] = []
        for job_id, item in zip(context.job_ids, inputs, strict=True):
            n, steps = int(item.get("n", 1)), int(item.get("steps", 4))
            for step in range(steps):
                time.sleep(float(item.get("sleep", 0.0)))
                for index in range(n):
                    context.delta(job_id, piece(index, step), index=index)
            texts = ["".join(piece(i, s) for s in range(steps)) for i in range(n)]
            results.append({"choices": [{"index": i, "text": t} for i, t in enumerate(texts)]})
        return results

    def unload(self) -> None:
        pass
