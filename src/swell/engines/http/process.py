"""The server process an `http` engine starts itself: start, wait for readiness, restart on death, stop.

One supervisor thread owns the process: it spawns it (through `spawn`, so tests may substitute one),
probes `ready_url` until it answers 2xx, then waits for the process to exit. When it dies and
`restart` is on, the supervisor backs off (`backoff_delay`: doubling from `backoff` up to
`backoff_max`, reset once a start stayed up that long) and starts it again; meanwhile `ready` is
clear, so the engine fails the job in flight as retryable and holds new ones until the server is back.

The process runs in its own session (its whole group is signalled on stop: SIGTERM, then SIGKILL
after `stop_timeout`) and, on Linux, is sent SIGTERM should the supervisor thread itself vanish (the
worker killed), so no server outlives its worker. Its output goes to `log_path`, whose tail is
quoted when a start fails.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from swell.core.errors import EngineError

log = logging.getLogger("swell.engines.http")

Spawn = Callable[..., subprocess.Popen[bytes]]
PROBE_SECONDS = 0.25  # between readiness probes
LOG_TAIL = 2000  # characters of the server's log quoted in a failed start's error


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    BACKING_OFF = "backing-off"
    FAILED = "failed"  # dead and not restarted (restart off, or its first start failed)


# What the supervisor may do from each state: the transitions, as data.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.READY, State.BACKING_OFF, State.FAILED, State.STOPPED}),
    State.READY: frozenset({State.BACKING_OFF, State.FAILED, State.STOPPED}),
    State.BACKING_OFF: frozenset({State.STARTING, State.STOPPED}),
    State.FAILED: frozenset({State.STOPPED}),
}


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Seconds to wait before start number `failures + 1` after `failures` deaths in a row."""
    return 0.0 if failures <= 0 else min(cap, base * 2.0 ** (failures - 1))


@dataclass(frozen=True)
class ServerStats:
    state: str
    pid: int | None
    starts: int
    deaths: int
    last_exit: int | None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ManagedServer:
    """A server process kept running by one supervisor thread (see the module docstring)."""

    def __init__(
        self,
        command: Sequence[str],
        ready_url: str,
        *,
        log_path: Path,
        ready_timeout: float = 600.0,
        restart: bool = True,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        stop_timeout: float = 20.0,
        cwd: str | None = None,
        headers: Mapping[str, str] | None = None,
        spawn: Spawn = subprocess.Popen,
    ) -> None:
        self.command = list(command)
        self.ready_url = ready_url
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.restart = restart
        self.backoff, self.backoff_max = backoff, backoff_max
        self.stop_timeout = stop_timeout
        self.cwd = cwd
        self.headers = dict(headers or {})
        self.spawn = spawn
        self.state = State.STOPPED
        self.starts = self.deaths = 0
        self.last_exit: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._settled = threading.Event()  # the first start ended: ready, or failed
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: str | None = None

    # -- the engine's side --------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and return once it is ready; EngineError (quoting its log) when it exits
        or does not answer within `ready_timeout`."""
        if self._thread is not None:
            raise EngineError("the server was started already")
        self._thread = threading.Thread(target=self._supervise, name="http-server", daemon=True)
        self._thread.start()
        self._settled.wait()
        if not self._ready.is_set():
            self.stop()
            raise EngineError(f"the server {self.command[0]!r} did not start: {self._error}")

    def wait_ready(self, timeout: float) -> bool:
        """Whether the server is ready, waiting up to `timeout` seconds for a restart to finish."""
        return self._ready.wait(timeout) if self.state is not State.FAILED else False

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def stop(self) -> None:
        """Stop the server (SIGTERM to its group, SIGKILL after `stop_timeout`) and its supervisor."""
        self._stopping.set()
        self._ready.clear()
        self._terminate()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.stop_timeout + 5)
        self._move(State.STOPPED)

    def statistics(self) -> ServerStats:
        process = self._process
        return ServerStats(
            self.state.value, process.pid if process else None, self.starts, self.deaths, self.last_exit
        )

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"ManagedServer({self.command[0]!r}, state={stats.state}, pid={stats.pid}, starts={stats.starts})"
        )

    # -- the supervisor thread ----------------------------------------------------------------

    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            up = self._run_once()
            if self._stopping.is_set():
                return
            if not self.restart or (self.starts == 1 and not up):
                self._move(State.FAILED)
                self._settled.set()
                return
            failures = 1 if up >= self.backoff_max else failures + 1
            self._move(State.BACKING_OFF)
            delay = backoff_delay(failures, self.backoff, self.backoff_max)
            log.warning("server %r exited (%s); restarting in %.1f s", self.command[0], self.last_exit, delay)
            self._stopping.wait(delay)

    def _run_once(self) -> float:
        """Spawn, wait for readiness, wait for the exit; the seconds it was ready (0: never)."""
        self._move(State.STARTING)
        try:
            process = self._spawn()
        except OSError as exc:
            self._error = f"cannot run it: {exc}"
            return 0.0
        if not self._await_ready(process):
            self._kill(process)
        else:
            ready_at = time.monotonic()
            self._move(State.READY)
            self._ready.set()
            self._settled.set()
            process.wait()
            self._ready.clear()
            self._exited(process)
            return max(time.monotonic() - ready_at, 1e-9)
        self._exited(process)
        return 0.0

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            process = self.spawn(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        with self._lock:
            self._process = process
            self.starts += 1
        if self._stopping.is_set():
            self._terminate()
        return process

    def _await_ready(self, process: subprocess.Popen[bytes]) -> bool:
        """Probe until 2xx; False (with `_error` saying why) on exit, timeout or stop."""
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(headers=self.headers, timeout=httpx.Timeout(5.0), trust_env=False) as client:
            while time.monotonic() < deadline and not self._stopping.is_set():
                if process.poll() is not None:
                    self._error = f"it exited with status {process.returncode}; its log ends: {self._tail()}"
                    return False
                if _answers(client, self.ready_url):
                    return True
                self._stopping.wait(PROBE_SECONDS)
        self._error = (
            f"{self.ready_url} did not answer within {self.ready_timeout:g} s; its log ends: {self._tail()}"
        )
        return False

    def _exited(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self.last_exit = process.returncode
            if not self._stopping.is_set():
                self.deaths += 1

    def _terminate(self) -> None:
        with self._lock:
            process = self._process
        if process is not None and process.poll() is None:
            self._kill(process)

    def _kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the process group, then SIGKILL after `stop_timeout`."""
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()

    def _move(self, state: State) -> None:
        with self._lock:
            if state is self.state:
                return
            if state not in TRANSITIONS[self.state]:
                log.debug("server state %s -> %s ignored", self.state.value, state.value)
                return
            self.state = state

    def _tail(self) -> str:
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(max(0, os.path.getsize(self.log_path) - LOG_TAIL))
                text = log_file.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return " ".join(text.split()) or "(empty)"


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).is_success
    except httpx.HTTPError:
        return False


def _signal_group(process: subprocess.Popen[Any], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)
