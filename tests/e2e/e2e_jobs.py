"""Functions for the `callable` engine, imported by real worker processes in the end-to-end tests."""

from __future__ import annotations

import time
from typing import Any


def double(payload: dict[str, Any]) -> dict[str, Any]:
    time.sleep(float(payload.get("sleep", 0.0)))
    return {"n": int(payload["n"]) * 2}


def count_until_cancelled(payload: dict[str, Any], job: Any) -> dict[str, Any]:
    """Streams the words "0 1 2 ..." one every `every` seconds with its progress, up to `limit`;
    stops at the next word once the job is cancelled."""
    limit, every = int(payload.get("limit", 600)), float(payload.get("every", 0.05))
    for n in range(limit):
        if job.cancelled():
            return {"stopped_at": n}
        job.delta(f"{n} ")
        job.progress((n + 1) / limit, message=f"word {n + 1} of {limit}")
        time.sleep(every)
    return {"words": limit}
