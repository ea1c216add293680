"""Helpers for the gateway tests: the app over a real SQLite file, a replica view, a stand-in worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI

from swell.core.config import Settings, SwellConfig
from swell.core.replicas import ReplicaInfo
from swell.queue.base import QueueBackend

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}

SERVICES: dict[str, Any] = {
    "services": [
        {"name": "echo", "engine": "callable", "options": {"function": "builtins:dict"}, "max_attempts": 2},
        {
            "name": "small",
            "engine": "callable",
            "options": {"function": "builtins:dict"},
            "queue_limit": 2,
            "replicas": {"min": 0, "max": 3},
        },
    ],
    "gateway": {"max_body_bytes": 4096, "max_wait_seconds": 5},
}


@dataclass
class FakeReplicas:
    """A `ReplicaView` whose list the test sets."""

    items: list[ReplicaInfo] = field(default_factory=list)

    def replicas(self) -> list[ReplicaInfo]:
        return list(self.items)


@dataclass
class Gateway:
    app: FastAPI
    queue: QueueBackend
    settings: Settings
    config: SwellConfig
    replicas: FakeReplicas

    def client(self, headers: dict[str, Any] | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://swell.test",
            headers=AUTH if headers is None else headers,
        )


MakeGateway = Callable[..., Gateway]


def complete_in_thread(
    queue: QueueBackend, service: str, result: dict[str, Any], after: float, patience: float = 20.0
) -> threading.Thread:
    """A stand-in worker: after `after` seconds, lease one job of `service` (looking again until one is
    there, for up to `patience` seconds) and complete it."""

    def work() -> None:
        threading.Event().wait(after)
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            for job in queue.lease(service, "worker-1", max_jobs=1):
                queue.complete(job.id, "worker-1", result)
                return
            threading.Event().wait(0.02)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread
