"""A small LRU cache of LoRA adapters loaded into one pipeline (PEFT), so a switch costs milliseconds.

Adapters stay injected in the UNet (and text encoder, where a file has weights for it) until evicted:
a job whose LoRAs are loaded only calls `set_adapters` (names and weights), one that names a new one
loads it from its file, evicting the least recently used adapter not needed now when the cache is
full. An evicted adapter is deleted from the pipeline (`delete_adapters`), which frees its weights,
so memory stays flat however many distinct LoRAs pass through. A job without LoRAs disables them
(the base weights run untouched; nothing is fused, so nothing needs undoing).
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swell.core.errors import ValidationError

Resolver = Callable[[str], Path]  # a LoRA's name -> its safetensors file


@dataclass
class LoraStats:
    loads: int = 0  # adapters read from disk and injected
    hits: int = 0  # adapters a job needed that were loaded already
    evictions: int = 0
    switches: int = 0  # calls that changed the active set or its weights
    load_seconds: float = 0.0
    switch_seconds: float = 0.0  # set_adapters / disable_lora time, loads excluded


class LoraCache:
    """Up to `capacity` adapters of `pipe`, by name; `activate` makes exactly a job's set active."""

    def __init__(self, pipe: Any, resolve: Resolver, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.pipe, self.resolve, self.capacity = pipe, resolve, capacity
        self.stats = LoraStats()
        self._adapters: OrderedDict[str, str] = OrderedDict()  # LoRA name -> adapter name, LRU first
        self._active: tuple[tuple[str, float], ...] = ()
        self._ids = itertools.count()

    @property
    def loaded(self) -> list[str]:
        """The LoRA names loaded now, least recently used first."""
        return list(self._adapters)

    def activate(self, loras: Sequence[tuple[str, float]]) -> None:
        """Make `loras` (name, weight) the active adapters, loading and evicting as needed."""
        wanted = tuple(loras)
        if len(wanted) > self.capacity:
            raise ValidationError(f"at most {self.capacity} LoRAs at once here", field="input.loras")
        for name, _ in wanted:
            self._ensure(name, keep={n for n, _ in wanted})
        if wanted == self._active:
            return
        start = time.perf_counter()
        if wanted:
            names = [self._adapters[name] for name, _ in wanted]
            self.pipe.set_adapters(names, adapter_weights=[weight for _, weight in wanted])
            if not self._active:
                self.pipe.enable_lora()
        else:
            self.pipe.disable_lora()
        self._active = wanted
        self.stats.switches += 1
        self.stats.switch_seconds += time.perf_counter() - start

    def clear(self) -> None:
        """Unload every adapter."""
        if self._adapters:
            self.pipe.delete_adapters(list(self._adapters.values()))
        self._adapters.clear()
        self._active = ()

    def _ensure(self, name: str, keep: set[str]) -> None:
        if name in self._adapters:
            self._adapters.move_to_end(name)
            self.stats.hits += 1
            return
        path = self.resolve(name)
        while len(self._adapters) >= self.capacity:
            self._evict(keep)
        start = time.perf_counter()
        adapter = f"swell_lora_{next(self._ids)}"
        try:
            self.pipe.load_lora_weights(str(path), adapter_name=adapter)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            self._forget_partial(adapter)
            raise ValidationError(
                f"LoRA {name!r} does not fit this model: {exc}", field="input.loras"
            ) from None
        self._adapters[name] = adapter
        self._active = ()  # a fresh load may activate itself: the next set_adapters decides
        self.stats.loads += 1
        self.stats.load_seconds += time.perf_counter() - start

    def _evict(self, keep: set[str]) -> None:
        victim = next(name for name in self._adapters if name not in keep)
        self.pipe.delete_adapters(self._adapters.pop(victim))
        self._active = tuple(pair for pair in self._active if pair[0] != victim)
        self.stats.evictions += 1

    def _forget_partial(self, adapter: str) -> None:
        """Remove what a failed load left injected, so a bad file leaves no weights behind."""
        try:
            if adapter in {a for names in self.pipe.get_list_adapters().values() for a in names}:
                self.pipe.delete_adapters(adapter)
        except (ValueError, KeyError, RuntimeError):
            pass

    def __repr__(self) -> str:
        return f"LoraCache(loaded={self.loaded}, capacity={self.capacity}, {self.stats})"


def folder_resolver(folder: Path) -> Resolver:
    """LoRA `name` is `folder/<name>.safetensors`; a missing one is the job's error."""
    from swell.engines.diffusers.spec import lora_file_name

    def resolve(name: str) -> Path:
        path = folder / lora_file_name(name)
        if not path.is_file():
            raise ValidationError(f"no LoRA named {name!r} on this service", field="input.loras")
        return path

    return resolve
