"""Several checkpoints in one worker: engines kept by checkpoint, least recently used unloaded first.

An engine holds one model for life (swell.engines), so a worker of a service with `models` keeps a
`ModelSet`: one engine per checkpoint it holds, built through the engine spec's factory with that
checkpoint's merged options (`ServiceConfig.model_options`). At most `affinity.max_loaded` are held;
with `affinity.memory_budget`, fewer when the measured footprint is above it. Before a load, the
least recently used engines are unloaded until there is a free place and (when the size of the
checkpoint is known from an earlier load) room for it; after it, while the footprint is above the
budget and another engine is held, the next least recently used one goes. The footprint is GPU
memory allocated by torch when the process uses CUDA, else the process's resident set size; an
unload is followed by `gc.collect()`, `torch.cuda.empty_cache()` where CUDA is in use, and
glibc's `malloc_trim`, so the memory is measured back as free.

Every load is counted and timed per checkpoint: `phases()` adds to the first load's fetch / load /
warmup the entries `load:MODEL` (seconds, all loads of it), `loads:MODEL` (how many), `switch` and
`switches` (seconds and count of the loads made while serving, after the start), which the status
file carries to the supervisor and the gateway's /metrics (`swell_model_loads_total`,
`swell_model_load_seconds`).

A service without `models` gets `ModelSet.single(engine)`: its one engine answers for any model,
and nothing is ever loaded or unloaded while serving.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from swell.engines.base import Engine, LoadTimings

log = logging.getLogger("swell.worker")

Build = Callable[[str | None], Engine]  # an engine for a checkpoint, built but not loaded
Measure = Callable[[], int]  # the footprint now, in bytes


@dataclass(frozen=True, slots=True)
class Switch:
    """One load: which checkpoint, how long it took, what was unloaded for it, and whether the
    worker was serving already (False: a preload at start)."""

    model: str | None
    seconds: float
    evicted: tuple[str | None, ...]
    serving: bool


class ModelSet:
    """The engines a worker holds, by checkpoint (see the module docstring). Loads happen in the
    engine thread; `held` is read by the lease loop between batches."""

    def __init__(
        self,
        build: Build,
        *,
        max_loaded: int = 1,
        budget_bytes: int | None = None,
        measure: Measure | None = None,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.build = build
        self.max_loaded = max_loaded
        self.budget_bytes = budget_bytes
        self.measure = measure or footprint_bytes
        self.on_change = on_change
        self.clock = clock
        self.affine = True  # a set of checkpoints; False for `single`
        self.serving = False  # loads from now on are switches
        self.switches: list[Switch] = []
        self._engines: OrderedDict[str | None, Engine] = OrderedDict()  # least recently used first
        self._sizes: dict[str | None, int] = {}  # bytes a checkpoint added when it was last loaded
        self._first: dict[str, float] = {}  # the first load's phases (fetch, load, warmup)
        self._lock = threading.Lock()

    @classmethod
    def single(cls, engine: Engine, phases: dict[str, float] | None = None) -> ModelSet:
        """A set of one loaded engine that serves every job (a service without `models`)."""
        models = cls(lambda model: engine, max_loaded=1)
        models.affine = False
        models._engines[engine.model] = engine
        models._first = dict(phases or {})
        return models

    # -- what is held ----------------------------------------------------------------------------

    @property
    def held(self) -> tuple[str | None, ...]:
        """The checkpoints loaded now, most recently used first."""
        with self._lock:
            return tuple(reversed(self._engines))

    @property
    def current(self) -> Engine | None:
        """The engine used last, or None before any load."""
        with self._lock:
            return next(reversed(self._engines.values()), None)

    @property
    def batches(self) -> bool:
        """Whether the engine used last batches (before any load: True; a lease of one model's
        jobs is split into calls the engine can take anyway)."""
        engine = self.current
        return True if engine is None else bool(engine.batches)

    # -- loading ---------------------------------------------------------------------------------

    def engine(self, model: str | None) -> Engine:
        """The engine for `model`, loaded now (unloading others first) when it is not held; a
        set made by `single` answers with its one engine for every model."""
        if not self.affine:
            return next(iter(self._engines.values()))
        with self._lock:
            engine = self._engines.get(model)
            if engine is not None:
                self._engines.move_to_end(model)
                return engine
        return self._load(model)

    def preload(self, models: Iterable[str | None]) -> None:
        """Load `models` in order (the last is then the most recent), as far as `max_loaded` allows."""
        for model in models:
            self.engine(model)

    def _load(self, model: str | None) -> Engine:
        evicted = self._make_room(model)
        before, started = self.measure(), self.clock()
        engine = self.build(model)
        timings = LoadTimings.of(engine.load())
        seconds = self.clock() - started
        with self._lock:
            self._engines[model] = engine
            self._sizes[model] = max(0, self.measure() - before)
            if not self._first:
                self._first = timings.to_dict()
        evicted += self._shrink_to_budget()
        switch = Switch(model, seconds, tuple(evicted), self.serving)
        self.switches.append(switch)
        log.info("loaded model %s in %.2f s (unloaded %s)", model, seconds, list(evicted) or "none")
        self.on_change()
        return engine

    def _make_room(self, model: str | None) -> list[str | None]:
        """Unload the least recently used engines until `model` has a place (and room, when its
        size is known)."""
        evicted: list[str | None] = []
        while self._engines and (
            len(self._engines) >= self.max_loaded or self._over(self._sizes.get(model, 0))
        ):
            evicted.append(self._evict_oldest())
        return evicted

    def _shrink_to_budget(self) -> list[str | None]:
        evicted: list[str | None] = []
        while len(self._engines) > 1 and self._over(0):
            evicted.append(self._evict_oldest())
        return evicted

    def _over(self, adding: int) -> bool:
        return self.budget_bytes is not None and self.measure() + adding > self.budget_bytes

    def _evict_oldest(self) -> str | None:
        with self._lock:
            model, engine = self._engines.popitem(last=False)
        _unload(engine, model)
        return model

    def unload_all(self) -> None:
        """Unload every engine (the worker stops)."""
        while self._engines:
            self._evict_oldest()

    # -- what it reports -------------------------------------------------------------------------

    def phases(self) -> dict[str, float]:
        """The first load's phases, then seconds and counts per checkpoint and of switches."""
        phases = dict(self._first)
        for switch in list(self.switches):
            name = "" if switch.model is None else switch.model
            phases[f"load:{name}"] = phases.get(f"load:{name}", 0.0) + switch.seconds
            phases[f"loads:{name}"] = phases.get(f"loads:{name}", 0.0) + 1
            if switch.serving:
                phases["switch"] = phases.get("switch", 0.0) + switch.seconds
                phases["switches"] = phases.get("switches", 0.0) + 1
        return {k: round(v, 6) for k, v in phases.items()}

    def __repr__(self) -> str:
        return f"ModelSet(held={list(self.held)}, max_loaded={self.max_loaded}, loads={len(self.switches)})"


def _unload(engine: Engine, model: str | None) -> None:
    """Unload `engine` and give its memory back (module docstring); an unload that fails is logged,
    since the engine is dropped either way."""
    try:
        engine.unload()
    except Exception:
        log.exception("unloading model %s failed; dropping it anyway", model)
    del engine
    release_memory()


def release_memory() -> None:
    """Collect garbage, empty torch's CUDA cache when CUDA is in use, and trim the C heap. A worker
    freezes its heap after start-up (swell.core.heap), which would keep an unloaded model's reference
    cycles from the collector for ever: the heap is unfrozen for this collection, then frozen again."""
    frozen = gc.get_freeze_count() > 0
    if frozen:
        gc.unfreeze()
    gc.collect()
    if frozen:
        gc.freeze()
    torch: Any = sys.modules.get("torch")
    if torch is not None and _cuda_in_use(torch):
        torch.cuda.empty_cache()
    with contextlib.suppress(Exception):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def footprint_bytes() -> int:
    """GPU memory torch has allocated when this process uses CUDA, else the resident set size."""
    torch: Any = sys.modules.get("torch")
    if torch is not None and _cuda_in_use(torch):
        return int(torch.cuda.memory_allocated())
    return rss_bytes()


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _cuda_in_use(torch: Any) -> bool:
    try:
        return bool(torch.cuda.is_available() and torch.cuda.is_initialized())
    except Exception:  # a broken CUDA install reads as none
        return False


__all__ = ["ModelSet", "Switch", "footprint_bytes", "release_memory", "rss_bytes"]
