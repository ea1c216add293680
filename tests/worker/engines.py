"""Small engines for worker tests, named by import string (`tests.worker.engines:BatchEngine`)."""

from __future__ import annotations

import time
from typing import Any

from swell.core.errors import ValidationError
from swell.engines.base import RunContext
from swell.engines.spec import Options


class BatchEngine:
    """Computes a whole batch in one step, as a model on a GPU does: one poisonous input makes the
    call raise for every input in it (`{"poison": "crash"}`: RuntimeError, `"invalid"`: ValidationError).
    With `short`, a call on more than two inputs loses its last result (an engine bug)."""

    model: str | None = None

    def __init__(self, short: bool = False, batch: bool = True) -> None:
        self.short = short
        self.batches = batch
        self.calls: list[int] = []  # the size of every call, in order

    def load(self) -> dict[str, float]:
        return {"fetch": 0.0, "load": 0.0, "warmup": 0.0}

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        self.calls.append(len(inputs))
        for item in inputs:
            if item.get("poison") == "invalid":
                raise ValidationError("a poisonous input", field="input.poison")
            if item.get("poison"):
                raise RuntimeError("a poisonous input crashed the batch")
        results: list[dict[str, Any] | Exception] = [{"n": item.get("n")} for item in inputs]
        return results[:-1] if self.short and len(inputs) > 2 else results

    def unload(self) -> None:
        pass


class SteppingEngine:
    """Runs inputs one after another (`{"seconds": s}` sleeps s) and reports each result as soon as it
    is final, as an engine that loops over its inputs should; `{"file": name}` writes a job file."""

    model: str | None = None
    batches = True

    def load(self) -> dict[str, float]:
        return {"fetch": 0.0, "load": 0.0, "warmup": 0.0}

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        results: list[dict[str, Any] | Exception] = []
        for job_id, item in zip(context.job_ids, inputs, strict=True):
            time.sleep(float(item.get("seconds", 0)))
            if "file" in item:
                (context.output_dir(job_id) / item["file"]).write_bytes(b"data")
            results.append({"step": item.get("n")})
            context.report(job_id, results[-1])
        return results

    def unload(self) -> None:
        pass


class CheckpointOptions(Options):
    checkpoint: str
    load_seconds: float = 0.05
    log: str | None = None  # a file every load and unload appends a line to


class CheckpointEngine:
    """One "checkpoint" per engine, as a real model engine holds: `load` sleeps `load_seconds` (and
    appends `load NAME` to `log`), every result names the checkpoint that made it, and a job's
    `{"seconds": s}` sleeps s first. For the model-affinity tests, named through the registry's
    `module:attr` path with options checked against `Options`."""

    Options = CheckpointOptions
    batches = True
    model: str | None

    def __init__(self, checkpoint: str, load_seconds: float = 0.05, log: str | None = None) -> None:
        self.model = checkpoint
        self.load_seconds = load_seconds
        self.log = log

    def load(self) -> dict[str, float]:
        time.sleep(self.load_seconds)
        self._note("load")
        return {"fetch": 0.0, "load": self.load_seconds, "warmup": 0.0}

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        results: list[dict[str, Any] | Exception] = []
        for item in inputs:
            time.sleep(float(item.get("seconds", 0)))
            results.append({"model": self.model, "n": item.get("n"), "batch": len(inputs)})
        return results

    def unload(self) -> None:
        self._note("unload")

    def _note(self, what: str) -> None:
        if self.log is not None:
            with open(self.log, "a") as out:
                out.write(f"{what} {self.model}\n")
