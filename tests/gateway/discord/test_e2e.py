"""The whole path under a real uvicorn on loopback: a signed slash command, a durable job in SQLite,
a real worker process drawing a PNG through the result store, and the outbox dispatcher editing the
deferred response on the stand-in Discord API, which checks the multipart it receives."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from swell.core.clock import ManualClock
from swell.core.config import Settings, SwellConfig
from swell.engines.results import LocalResultStore
from swell.gateway.app import create_app
from swell.gateway.limits import GatewayLimits
from swell.queue.base import QueueBackend, open_queue
from tests.gateway.discord.api import Edit, StandIn
from tests.gateway.discord.conftest import Signer, config_for, interaction
from tests.support import free_port, wait_for

FUNCTION = "tests.gateway.discord.engine:draw"


@dataclass
class Served:
    base: str
    queue: QueueBackend
    config: SwellConfig
    results: LocalResultStore
    signer: Signer
    api: StandIn
    clock: ManualClock | None = None

    def send(self, payload: dict[str, Any]) -> httpx.Response:
        body = json.dumps(payload).encode()
        stamp = int(self.clock.now()) if self.clock is not None else None
        return httpx.post(
            f"{self.base}/discord/interactions",
            content=body,
            headers=self.signer.headers(body, stamp),
            timeout=10,
        )

    def final_edit(self, token: str, timeout: float = 60) -> Edit:
        """The edit that answers the command (not a progress edit)."""

        def answered() -> bool:
            return any(not e.payload.get("content", "").startswith("⏳") for e in self.api.edits_for(token))

        wait_for(answered, timeout, f"the follow-up of {token}")
        return next(e for e in self.api.edits_for(token) if not e.payload.get("content", "").startswith("⏳"))


@contextmanager
def serve(tmp: Path, signer: Signer, api: StandIn, *, clock: ManualClock | None = None) -> Iterator[Served]:
    config = config_for(signer.public_hex, api.api_base, function=FUNCTION)
    queue = open_queue(f"sqlite:///{tmp / 'q.db'}")
    limits = GatewayLimits(max_loop_lag_seconds=60.0)  # a busy CI machine must not shed the commands
    extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
    app = create_app(config, Settings(data_dir=tmp, api_key="k"), queue, limits=limits, **extra)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200, 20, "uvicorn")
    try:
        yield Served(base, queue, config, LocalResultStore(tmp), signer, api, clock)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        queue.close()


def spawn_worker(tmp: Path, served: Served, service: str) -> subprocess.Popen[bytes]:
    spec = served.config.service(service).model_dump(mode="json")
    command = [
        sys.executable, "-m", "swell.worker",
        "--queue", f"sqlite:///{tmp / 'q.db'}",
        "--service", json.dumps(spec),
        "--replica-id", f"{service}-1",
        "--data-dir", str(tmp),
    ]  # fmt: skip
    return subprocess.Popen(command)


@pytest.fixture
def served(tmp_path: Path, signer: Signer, stand_in: StandIn) -> Iterator[Served]:
    with serve(tmp_path, signer, stand_in) as running:
        yield running


@pytest.fixture
def worker(tmp_path: Path, served: Served) -> Iterator[subprocess.Popen[bytes]]:
    proc = spawn_worker(tmp_path, served, "draw")
    yield proc
    proc.terminate()
    proc.wait(timeout=30)


def test_a_command_ends_in_an_edit_with_the_image(served: Served, worker: Any) -> None:
    payload = interaction(options={"prompt": "a tiny grey square"})
    payload["data"]["options"].append({"name": "seed", "type": 4, "value": 3})
    started = time.monotonic()
    response = served.send(payload)
    assert response.status_code == 200 and response.json() == {"type": 5}
    assert time.monotonic() - started < 3.0  # Discord's own limit, not a speed claim
    edit = served.final_edit(payload["token"])
    (job,) = served.queue.jobs(service="draw", limit=10)
    assert job.state.value == "succeeded" and job.input == {
        "steps": 2,
        "prompt": "a tiny grey square",
        "seed": 3,
    }
    with served.results.open(job.id, "0.png") as file:
        png = file.read()
    assert png.startswith(b"\x89PNG") and edit.multipart
    assert edit.files == {0: ("0.png", png)}
    assert edit.payload["attachments"] == [{"id": 0, "filename": "0.png"}]
    assert edit.payload["content"] == "**a tiny grey square**"
    assert served.api.problems == [] and served.api.violations == 0
    wait_for(lambda: _row_state(served, job.id) == "delivered", 10, "the row to be delivered")


def _row_state(served: Served, job_id: str) -> str:
    rows = served.queue.deliveries(job_id)
    return str(rows[0].state.value)


def test_progress_is_shown_while_the_job_runs(served: Served, worker: Any) -> None:
    payload = interaction(options={"prompt": "slowly, please"})  # 4 steps of 0.5 s
    assert served.send(payload).json() == {"type": 5}
    served.final_edit(payload["token"])
    edits = served.api.edits_for(payload["token"])
    assert len(edits) >= 2, [e.payload for e in edits]
    assert edits[-1].files and all(e.payload["content"].startswith("⏳ Working…") for e in edits[:-1])
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(edits[:-1])]
    assert all(gap >= 0.9 for gap in gaps)  # progress edits at least progress_every (1 s) apart


def test_rate_limits_lose_no_follow_up(served: Served, worker: Any) -> None:
    served.api.rate_limit_first, served.api.retry_after = 3, 0.3
    payloads = [interaction(options={"prompt": f"picture {i}"}, user=str(100 + i)) for i in range(4)]
    for payload in payloads:
        assert served.send(payload).json() == {"type": 5}
    for payload in payloads:
        edit = served.final_edit(payload["token"])
        assert list(edit.files) == [0]
    assert served.api.limited >= 3 and served.api.problems == []


def test_a_failed_job_is_told_in_the_message(served: Served, worker: Any) -> None:
    payload = interaction(options={"prompt": "please fail"})
    assert served.send(payload).json() == {"type": 5}
    edit = served.final_edit(payload["token"])
    assert "failed" in edit.payload["content"] and "cannot draw" in edit.payload["content"]
    assert edit.files == {}


def test_a_job_past_the_token_s_life_is_told_so(tmp_path: Path, signer: Signer, stand_in: StandIn) -> None:
    clock = ManualClock(time.time())
    with serve(tmp_path, signer, stand_in, clock=clock) as served:
        payload = interaction(options={"prompt": "nobody draws this"})  # no worker: it stays queued
        assert served.send(payload).json() == {"type": 5}
        clock.advance(15 * 60 - 30)  # within the dispatcher's lead before the token expires
        edit = served.final_edit(payload["token"], timeout=30)
        assert "still queued" in edit.payload["content"]
        (job,) = served.queue.jobs(service="draw", limit=10)
        wait_for(lambda: _row_state(served, job.id) == "expired", 10, "the row to expire")
