"""`swell up`: the gateway (whose lifespan runs the outbox dispatcher), the worker supervisor and the
brain in one process.

Assembly only: every part is built and tested on its own; this module wires them together, runs the
gateway under uvicorn with the background loops beside it on one event loop, and drains the workers
on the way out.

Before it says it serves, `swell up` makes sure it can: the data dir is created private (0700, and
the process umask 077 so every file in it is 0600), a probe file is written, synced and removed,
and the queue is opened and takes a write (`probe()`). Any of those failing (read-only, a file where
the folder should be, a full disk) stops it with one line naming the data dir and the reason.
The API key is shown only on the start that generated it; a supplied key is never printed, and a
key generated earlier is pointed to by its file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from swell.core import heap
from swell.core.clock import SystemClock
from swell.core.config import Settings, SwellConfig
from swell.core.errors import SwellError, Unavailable
from swell.core.replicas import ReplicaState
from swell.gateway.secrets import Origin, Secret, obtain_secret
from swell.queue import open_queue
from swell.queue.base import QueueBackend

log = logging.getLogger("swell")

PROBE_BYTES = 64 * 1024  # written and synced by the start-up check: enough to need a fresh block


class Server:
    def __init__(self, config: SwellConfig, settings: Settings, *, console: Console | None = None) -> None:
        from swell.gateway.urls import validate_allow_hosts

        self.console = console or Console(stderr=True)
        validate_allow_hosts(settings.callback_allow_hosts)  # a bad entry stops the start, named
        data_dir = settings.data_dir
        prepare_data_dir(data_dir)
        self.api_key = obtain_secret(settings.api_key, data_dir, "api_key")
        webhook_secret = obtain_secret(settings.webhook_secret, data_dir, "webhook_secret")
        self.settings = settings.model_copy(
            update={"api_key": self.api_key.value, "webhook_secret": webhook_secret.value}
        )
        self.config = config
        self.clock = SystemClock()
        self.registry = CollectorRegistry()
        self._stopping = False
        self._uvicorn: uvicorn.Server | None = None
        self._queue: QueueBackend | None = None

    def run(self) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per webhook try is noise
        self._queue = open_checked_queue(self.settings)
        self._announce()
        # uvicorn catches SIGTERM/SIGINT to stop serving, then re-raises the signal to the handler it
        # found at start. With the default handlers that re-raise would kill this process before the
        # workers drain; ours only notes the request, so `_serve` returns through its drain and we exit 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop_signal)
        asyncio.run(self._serve())

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        if self._stopping:
            self.console.print("[yellow]already draining the workers; SIGKILL stops at once[/]")
        self._stopping = True
        if self._uvicorn is not None:  # a signal before uvicorn installs its own handlers
            self._uvicorn.should_exit = True

    async def _serve(self) -> None:
        from swell.cluster.base import open_cluster
        from swell.gateway.app import create_app
        from swell.gateway.protocol import serving_config

        settings, config = self.settings, self.config
        queue = self._queue or open_checked_queue(settings)
        supervisor = open_cluster(config, settings.database_url, settings.data_dir, clock=self.clock)
        brain = self._brain(queue, supervisor)
        self._register_data_metrics(supervisor)
        app = create_app(
            config,
            settings,
            queue,
            replicas=supervisor,
            clock=self.clock,
            registry=self.registry,
            extra_services=brain.plan_view if brain else None,
        )
        server = uvicorn.Server(serving_config(app, settings.host, settings.port, app.state.limits))
        server.should_exit = self._stopping
        self._uvicorn = server
        stop = asyncio.Event()
        supervisor.start()
        loops: list[asyncio.Task[Any]] = []
        if brain:
            tick = _every(config.brain.tick_seconds, brain.tick, stop)
            loops.append(asyncio.create_task(tick, name="brain"))
        progress = threading.Thread(target=self._show_loading, args=(supervisor, stop), daemon=True)
        progress.start()
        heap.freeze()  # after the app, supervisor and loops exist; see swell.core.heap
        try:
            await server.serve()
        finally:
            stop.set()
            await asyncio.gather(*loops, return_exceptions=True)
            self.console.print("[bold]releasing workers…[/] (local ones drain; Ray's keep serving)")
            await asyncio.to_thread(supervisor.release)
            queue.close()
            self.console.print(f"[bold]stopped[/]: every job is kept in {settings.data_dir}")

    def _brain(self, queue: Any, supervisor: Any) -> Any:
        if self.config.brain.mode == "off":
            return None
        from swell.brain.live import LiveLoop

        return LiveLoop(self.config, queue, supervisor, clock=self.clock, registry=self.registry)

    def _register_data_metrics(self, supervisor: Any) -> None:
        """The node cache's counters and the replicas' load phases on /metrics (with the data extra)."""
        try:
            from swell.data.cache import open_node_cache
            from swell.data.metrics import register_metrics
        except ImportError:  # `swell[data]` is not installed: no cache to report on
            return
        register_metrics(self.registry, open_node_cache(self.settings.data_dir), replicas=supervisor)

    def _announce(self) -> None:
        s = self.settings
        self.console.print(f"[bold green]swell[/] serving on http://{s.host}:{s.port} (data in {s.data_dir})")
        if s.auth:
            self.console.print(_key_line(self.api_key))
        else:
            self.console.print(
                "[bold red on yellow] AUTHENTICATION IS OFF [/] --no-auth: anyone who can reach this port "
                "can submit jobs and read results. Use it only for local experiments."
            )

    def _show_loading(self, supervisor: Any, stop: asyncio.Event) -> None:
        """A progress bar while the replicas load their models, then one line per replica."""
        wanted = sum(s.replicas.min for s in self.config.services)
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} replicas ready"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task("loading models", total=wanted)
            while not stop.is_set():
                replicas = supervisor.replicas()
                ready = sum(r.state in (ReplicaState.READY, ReplicaState.BUSY) for r in replicas)
                bar.update(task, completed=min(ready, wanted))
                if ready >= wanted:
                    break
                threading.Event().wait(0.2)
        if not stop.is_set():
            for r in supervisor.replicas():
                phases = ", ".join(f"{k} {v:.1f}s" for k, v in r.phases.items())
                self.console.print(f"  {r.service}: replica {r.id} pid {r.pid} ready ({phases})")


def _key_line(key: Secret) -> str:
    """What `swell up` says about its API key: the key itself only when this start generated it."""
    if key.origin is Origin.GENERATED:
        return (
            f"API key (new, kept in {key.path}): [bold]{key.value}[/]  (send 'Authorization: Bearer <key>')"
        )
    if key.origin is Origin.STORED:
        return f"API key: the one kept in {key.path}  (send 'Authorization: Bearer <key>')"
    return "API key: the one supplied (SWELL_API_KEY)"


def prepare_data_dir(path: Path) -> None:
    """Make `path` a private, writable data dir, or raise `Unavailable` naming it and the reason.

    Sets the process umask to 077 first, so everything Swell writes there later (database, results,
    keys) is readable by this user alone."""
    os.umask(0o077)
    if path.exists() and not path.is_dir():
        raise Unavailable(f"the data dir {path} is not usable: it is a file, not a folder")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.stat().st_uid == os.getuid():
            path.chmod(0o700)
        _write_probe(path)
    except OSError as exc:
        raise Unavailable(f"the data dir {path} is not usable: {exc.strerror or exc}") from None


def _write_probe(path: Path) -> None:
    probe = path / f".swell-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with probe.open("xb") as out:
            out.write(os.urandom(PROBE_BYTES))
            out.flush()
            os.fsync(out.fileno())
    finally:
        probe.unlink(missing_ok=True)


def open_checked_queue(settings: Settings) -> QueueBackend:
    """The queue, opened and known to take a write; `Unavailable` with one line otherwise."""
    try:
        queue = open_queue(settings.database_url)
    except SwellError:
        raise
    except Exception as exc:  # a driver's own error: the file cannot be opened or created
        raise Unavailable(f"the queue at {settings.database_url} cannot be opened: {exc}") from None
    try:
        queue.probe()
    except Exception as exc:
        queue.close()
        reason = exc.message if isinstance(exc, SwellError) else f"{type(exc).__name__}: {exc}"
        raise Unavailable(f"the queue at {settings.database_url} does not take writes: {reason}") from None
    return queue


async def _every(seconds: float, step: Callable[[], Any], stop: asyncio.Event) -> None:
    """Run the blocking `step` in a thread every `seconds` until `stop`; a failure is logged, not fatal."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(step)
        except Exception:
            log.exception("periodic step %s failed", getattr(step, "__name__", step))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)


__all__ = ["Server"]
