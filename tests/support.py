"""Helpers shared by every test folder: a free loopback port, polling, a real `swell up` process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def loopback_only() -> bool:
    """Whether this process runs in a network namespace whose only interface is loopback (where a Ray
    cluster cannot reach past 127.0.0.1: `ip netns add NS; ip netns exec NS ...`, as .ci/run does)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class SwellProcess:
    """A real `swell up` in its own process group, with its log kept for failures."""

    proc: subprocess.Popen[bytes]
    base_url: str
    api_key: str
    data_dir: Path
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def services(self) -> list[dict]:
        return httpx.get(f"{self.base_url}/v1/services", headers=self.headers, timeout=5).json()["services"]

    def wait_ready(self, replicas: int, timeout: float = 120) -> None:
        def ready() -> bool:
            found = [r for s in self.services() for r in s["replicas"] if r["state"] in ("ready", "busy")]
            return len(found) >= replicas

        try:
            wait_for(ready, timeout, f"{replicas} ready replicas")
        except AssertionError:
            raise AssertionError(
                f"swell up did not get ready; its log:\n{self.log.read_text()[-4000:]}"
            ) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return int(self.proc.returncode)
