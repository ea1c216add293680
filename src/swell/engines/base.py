"""The engine protocol: load a model, run a batch of inputs, unload."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class RunContext:
    """What an engine may know about the batch it runs: the job ids and where their files go."""

    job_ids: Sequence[str]
    data_dir: Path

    def output_dir(self, job_id: str) -> Path:
        """The directory for a job's large binary outputs (served at /v1/jobs/{id}/files/{name})."""
        path = self.data_dir / "files" / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path


@runtime_checkable
class Engine(Protocol):
    """A model pipeline hosted by one worker process."""

    batches: bool
    model: str | None

    def load(self) -> dict[str, float]:
        """Load the model; return seconds spent per phase (fetch, load, warmup)."""
        ...

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        """Run one batch; one result dict or one exception per input, in order."""
        ...

    def unload(self) -> None:
        """Release the model."""
        ...
