"""The engine protocol: load a model, run a batch of inputs, unload; and what a batch may do meanwhile.

`RunContext` is what an engine gets per call: the job ids, and ways to hand in a job's result early
(`report`), report how far a job is (`progress`, with an optional preview image) or stream its text
(`delta`, one text per completion of a job), see whether the job was cancelled (`cancelled`), and
write result files (`results`). The
worker wires these to the queue (swell.worker.batch.Signals): progress and text are sent in batches
a few times a second, cancel requests are polled in the background, so every call here is cheap and
never blocks on storage. Outside a worker (a test, a notebook) they do nothing, or are recorded by a
`MemorySignals`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from swell.core.errors import EngineError
from swell.engines.results import FOLDER_MODE, LocalResultStore, ResultStore

EngineResult = dict[str, Any] | BaseException  # one input's result, or the error it failed with

FILES_MODE = FOLDER_MODE
PHASES = ("fetch", "load", "warmup")


class JobCancelled(EngineError):
    """What an engine returns (or raises, for a call on one job) for a job it stopped on a cancel."""


@dataclass(frozen=True, slots=True)
class LoadTimings:
    """Seconds an engine's load spent per phase: fetching files, loading weights, warming up."""

    fetch: float = 0.0
    load: float = 0.0
    warmup: float = 0.0

    @property
    def total(self) -> float:
        return self.fetch + self.load + self.warmup

    def to_dict(self) -> dict[str, float]:
        return {"fetch": self.fetch, "load": self.load, "warmup": self.warmup}

    @classmethod
    def of(cls, value: LoadTimings | Mapping[str, Any] | None) -> LoadTimings:
        """`value` as LoadTimings: an engine's own dict (unknown keys ignored, missing ones 0) or None."""
        if isinstance(value, LoadTimings):
            return value
        if value is None:
            return cls()
        seconds = {phase: float(value.get(phase) or 0.0) for phase in PHASES}
        return cls(**seconds)


class JobSignals(Protocol):
    """Where a batch's progress, text and cancel checks go; the worker's talks to the queue."""

    def progress(self, job_id: str, fraction: float, preview: bytes | None, message: str | None) -> None: ...

    def delta(self, job_id: str, text: str) -> None: ...

    def cancelled(self, job_id: str) -> bool: ...


@runtime_checkable
class ChoiceSignals(Protocol):
    """Signals that also carry the text of a job's other completions (`n` > 1), each on its own:
    `choice_delta(job_id, index, text)`, the delta event's `index`. Signals without it get the
    first completion's text only (`delta`); the others then arrive whole in the result."""

    def choice_delta(self, job_id: str, index: int, text: str) -> None: ...


@dataclass
class MemorySignals:
    """Signals kept in memory, for running an engine outside a worker: what it reported, in order,
    and `cancel(job_id)` to make `cancelled(job_id)` true from another thread."""

    events: list[tuple[str, str, Any]] = field(default_factory=list)  # (job id, "progress"|"delta", value)
    choices: list[tuple[str, int, str]] = field(default_factory=list)  # (job id, index, text): every delta
    previews: dict[str, bytes] = field(default_factory=dict)  # the last preview per job
    cancels: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def progress(self, job_id: str, fraction: float, preview: bytes | None, message: str | None) -> None:
        with self._lock:
            self.events.append((job_id, "progress", fraction))
            if preview is not None:
                self.previews[job_id] = preview

    def delta(self, job_id: str, text: str) -> None:
        self.choice_delta(job_id, 0, text)

    def choice_delta(self, job_id: str, index: int, text: str) -> None:
        with self._lock:
            self.choices.append((job_id, index, text))
            if index == 0:
                self.events.append((job_id, "delta", text))

    def cancelled(self, job_id: str) -> bool:
        return job_id in self.cancels

    def cancel(self, job_id: str) -> None:
        self.cancels = self.cancels | {job_id}  # a new set: readers in other threads see one or the other

    def text(self, job_id: str, index: int = 0) -> str:
        """Every delta of `job_id`'s completion `index`, joined."""
        with self._lock:
            return "".join(v for j, i, v in self.choices if j == job_id and i == index)

    def fractions(self, job_id: str) -> list[float]:
        with self._lock:
            return [v for j, kind, v in self.events if j == job_id and kind == "progress"]


@dataclass(frozen=True)
class RunContext:
    """What an engine may know and do about the call it runs (see the module docstring).

    `sink` is set by the worker: an engine that finishes inputs one after another may `report` each
    result as soon as it is final, so that a batch which later hangs or crashes does not take work
    already done with it (the worker settles reported results without waiting for the batch).
    """

    job_ids: Sequence[str]
    data_dir: Path
    sink: Callable[[str, EngineResult], None] | None = None
    signals: JobSignals | None = None
    results: ResultStore = field(default=None)  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self) -> None:
        if self.results is None:
            object.__setattr__(self, "results", LocalResultStore(self.data_dir))

    def output_dir(self, job_id: str) -> Path:
        """The local directory for a job's files (served at /v1/jobs/{id}/files/{name} when the gateway
        shares this disk). Prefer `results.put`, which also works when it does not."""
        path = self.data_dir / "files" / job_id
        path.mkdir(mode=FILES_MODE, parents=True, exist_ok=True)
        return path

    def report(self, job_id: str, result: EngineResult) -> None:
        """Hand in `job_id`'s final result (or its error) before `run` returns; the entry `run` then
        returns for it is ignored. Does nothing outside a worker (no sink)."""
        if self.sink is not None:
            self.sink(job_id, result)

    def progress(
        self, job_id: str, fraction: float, *, preview: bytes | None = None, message: str | None = None
    ) -> None:
        """How far `job_id` is, 0 to 1 (clamped), with an optional preview image (PNG, JPEG or WebP
        bytes) and a short message. Cheap: the worker sends the latest a few times a second."""
        self._check(job_id)
        if not isinstance(fraction, int | float) or math.isnan(fraction):
            raise ValueError(f"progress must be a number from 0 to 1, not {fraction!r}")
        if self.signals is not None:
            self.signals.progress(job_id, min(1.0, max(0.0, float(fraction))), preview, message)

    def delta(self, job_id: str, text: str, *, index: int = 0) -> None:
        """The next piece of `job_id`'s streamed text (an LLM's tokens), in order; `index` is the
        completion it belongs to when a job makes several. Signals that cannot carry an index
        (not `ChoiceSignals`) stream completion 0 only."""
        self._check(job_id)
        if not text or self.signals is None:
            return
        choice_delta = getattr(self.signals, "choice_delta", None)  # a ChoiceSignals
        if choice_delta is not None:
            choice_delta(job_id, index, text)
        elif index == 0:
            self.signals.delta(job_id, text)

    def cancelled(self, job_id: str) -> bool:
        """Whether `job_id` was cancelled: stop working on it at the next step or token, and return
        (or report) anything for it; the worker settles it `cancelled`. Cheap enough to ask per step."""
        return self.signals is not None and self.signals.cancelled(job_id)

    def _check(self, job_id: str) -> None:
        if job_id not in self.job_ids:
            raise ValueError(f"job {job_id!r} is not in this call")


@runtime_checkable
class Engine(Protocol):
    """A model pipeline hosted by one worker process."""

    batches: bool
    model: str | None

    def load(self) -> LoadTimings | dict[str, float]:
        """Load the model; return seconds spent per phase (a LoadTimings; a dict of fetch, load,
        warmup is accepted from user engines)."""
        ...

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        """Run one call; one result dict or one exception per input, in order.

        An exception in an input's place fails that job alone. Raising (or returning a list of the
        wrong length) fails the call as a whole: the worker then runs each half of the call again,
        so raise only when the call as a whole went wrong, and put per-input errors in their place.
        """
        ...

    def unload(self) -> None:
        """Release the model."""
        ...
