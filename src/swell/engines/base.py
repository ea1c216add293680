"""The engine protocol: load a model, run a batch of inputs, unload."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

EngineResult = dict[str, Any] | BaseException  # one input's result, or the error it failed with

FILES_MODE = 0o700  # a job's files are the user's own: the gateway serves them, nobody else reads them


@dataclass(frozen=True)
class RunContext:
    """What an engine may know about the batch it runs: the job ids and where their files go.

    `sink` is set by the worker: an engine that finishes inputs one after another may `report` each
    result as soon as it is final, so that a batch which later hangs or crashes does not take work
    already done with it (the worker settles reported results without waiting for the batch).
    """

    job_ids: Sequence[str]
    data_dir: Path
    sink: Callable[[str, EngineResult], None] | None = None

    def output_dir(self, job_id: str) -> Path:
        """The directory for a job's large binary outputs (served at /v1/jobs/{id}/files/{name})."""
        path = self.data_dir / "files" / job_id
        path.mkdir(mode=FILES_MODE, parents=True, exist_ok=True)
        return path

    def report(self, job_id: str, result: EngineResult) -> None:
        """Hand in `job_id`'s final result (or its error) before `run` returns; the entry `run` then
        returns for it is ignored. Does nothing outside a worker (no sink)."""
        if self.sink is not None:
            self.sink(job_id, result)


@runtime_checkable
class Engine(Protocol):
    """A model pipeline hosted by one worker process."""

    batches: bool
    model: str | None

    def load(self) -> dict[str, float]:
        """Load the model; return seconds spent per phase (fetch, load, warmup)."""
        ...

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        """Run one batch; one result dict or one exception per input, in order.

        An exception in an input's place fails that job alone. Raising (or returning a list of the
        wrong length) fails the call as a whole: the worker then runs each half of the batch again,
        so raise only when the batch as a whole went wrong, and put per-input errors in their place.
        """
        ...

    def unload(self) -> None:
        """Release the model."""
        ...
