"""Functions for the `callable` engine in the Ray tests (imported on the nodes through PYTHONPATH)."""

from __future__ import annotations

from typing import Any


def write_file(item: dict[str, Any], job: Any) -> dict[str, Any]:
    """Write `item["text"]` as the job's result file `out.txt` through the worker's result store."""
    return {"file": job.put("out.txt", str(item["text"]).encode(), "text/plain")}
