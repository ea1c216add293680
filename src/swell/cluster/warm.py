"""`Warmer`: one background thread that fetches datasets into a node cache ahead of a replica needing them.

The brain's plan names a warm set (`Plan.warm`: checkpoints every node should keep cached); a
backend's `warm(service, models)` maps those to datasets (`swell.cluster.base.model_datasets`) and
hands the names to a `Warmer`, which preloads each exactly as `swell data preload NAME` does (the
same `swell.data.datasets.preload`). Decisions:

- One fetch at a time, on one daemon thread: warming is best effort and must not take the
  bandwidth a starting replica needs more than one dataset's worth. A name already pending, being
  fetched, or fetched by this warmer is not queued again, so no dataset is fetched twice at once.
- What the cache already holds costs nothing: a dataset whose manifest (`resolve`) is fully cached
  and verified is counted `cached` and not read at all; `file://` datasets are used in place and
  never fetched.
- A failure (an origin that is down, a missing `swell[data]` extra) is logged with the dataset's
  name and counted, never raised: the next `warm` naming it tries again.
- `stop()` ends the thread; a fetch in progress is abandoned at its next chunk (the cache keeps
  the chunks already written).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swell.cluster.base import one_line

if TYPE_CHECKING:
    from swell.data.cache import NodeCache
    from swell.data.config import DatasetConfig

log = logging.getLogger("swell.cluster")

CacheOpener = Callable[[Path], "NodeCache"]


class _Stopped(Exception):  # a control-flow signal inside the warmer, never seen by a caller
    """Raised inside a fetch's progress callback to abandon it when the warmer stops."""


def default_cache(data_dir: Path) -> NodeCache:
    from swell.data.cache import open_node_cache

    return open_node_cache(data_dir)


class Warmer:
    """Preloads datasets into `<data_dir>/cache` in the background (see the module docstring)."""

    def __init__(
        self,
        datasets: Mapping[str, DatasetConfig],
        data_dir: Path,
        *,
        open_cache: CacheOpener = default_cache,
    ) -> None:
        """`open_cache` opens the node cache of `data_dir` (the default reads SWELL_CACHE_QUOTA as
        `swell data preload` does)."""
        self.datasets = dict(datasets)
        self.data_dir = Path(data_dir)
        self._open_cache = open_cache
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()  # pending or being fetched
        self._done: set[str] = set()  # fetched or found cached by this warmer
        self._counts = {"fetched": 0, "cached": 0, "failed": 0}
        self._errors: dict[str, str] = {}  # the latest error per dataset
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, names: Iterable[str]) -> list[str]:
        """Queue the datasets of `names` that are not queued, fetched or fetched already; the names
        queued. Unknown names (no such dataset in the config) and `file://` datasets are skipped."""
        added = []
        with self._lock:
            if self._stop.is_set():
                return []
            for name in names:
                spec = self.datasets.get(name)
                if spec is None:
                    log.debug("warm: no dataset named %r; skipped", name)
                    continue
                if spec.source.startswith("file://") or name in self._queued or name in self._done:
                    continue
                self._queue.append(name)
                self._queued.add(name)
                added.append(name)
            if added:
                self._ensure_thread()
                self._wake.notify()
        return added

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread; a fetch in progress is abandoned at its next chunk."""
        with self._lock:
            self._stop.set()
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def idle(self) -> bool:
        """Nothing queued and nothing being fetched."""
        with self._lock:
            return not self._queued

    def statistics(self) -> dict[str, Any]:
        """{"pending", "fetched", "cached", "failed", "datasets", "errors"}: what `statistics()` shows."""
        with self._lock:
            return {
                "pending": sorted(self._queued),
                "datasets": sorted(self._done),
                **self._counts,
                "errors": dict(self._errors),
            }

    # -- the thread -------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="swell-warm", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stop.is_set():
                    self._wake.wait()
                if self._stop.is_set():
                    return
                name = self._queue.popleft()
            outcome = self._fetch(name)
            with self._lock:
                self._queued.discard(name)
                if outcome in ("fetched", "cached"):
                    self._done.add(name)
                    self._errors.pop(name, None)
                if outcome != "stopped":
                    self._counts[outcome] += 1

    def _fetch(self, name: str) -> str:
        """Preload one dataset: "fetched", "cached" (nothing to read), "failed" or "stopped"."""
        try:
            from swell.data.datasets import cached_bytes, preload, resolve

            cache = self._open_cache(self.data_dir)
            spec = self.datasets[name]
            manifest = resolve(name, spec, cache)
            if all(f.sha256 for f in manifest.files) and cached_bytes(manifest, cache) >= manifest.size:
                log.debug("warm: dataset %r is already cached", name)
                return "cached"
            done = preload(name, spec, cache, self._check_stop)
        except _Stopped:
            return "stopped"
        except Exception as exc:  # best effort: an origin that is down must not end the warmer
            message = f"{type(exc).__name__}: {one_line(exc)}"
            with self._lock:
                self._errors[name] = message
            log.warning("warm: preloading dataset %r failed: %s", name, message)
            return "failed"
        log.info("warm: dataset %r cached (%d files, %d bytes)", name, len(done.files), done.size)
        return "fetched"

    def _check_stop(self, _n: int) -> None:
        if self._stop.is_set():
            raise _Stopped


__all__ = ["Warmer"]
