"""Fixtures for the Discord door: a real Ed25519 key pair, signed interactions, the stand-in API,
and the gateway over a real SQLite file with `discord:` configured."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from swell.core.config import Settings, SwellConfig, parse_config
from swell.gateway.app import create_app
from swell.queue.base import QueueBackend, open_queue
from tests.gateway.discord.api import StandIn, discord_api

APP_ID = "1100000000000000001"
CHANNEL_ID = "2200000000000000002"
ROUTED_CHANNEL = "2200000000000000009"
_ids = itertools.count(3300000000000000000)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Signer:
    """Signs requests as Discord does: Ed25519 over `timestamp + body`, hex in the headers."""

    key: Ed25519PrivateKey

    @property
    def public_hex(self) -> str:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        return {
            "X-Signature-Ed25519": self.key.sign(stamp.encode() + body).hex(),
            "X-Signature-Timestamp": stamp,
            "Content-Type": "application/json",
        }


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def interaction(
    command: str = "imagine",
    options: dict[str, Any] | None = None,
    *,
    user: str = "4400000000000000001",
    channel: str = CHANNEL_ID,
    interaction_id: str | None = None,
) -> dict[str, Any]:
    """An APPLICATION_COMMAND interaction as Discord sends it from a guild."""
    ident = interaction_id or str(next(_ids))
    return {
        "id": ident,
        "application_id": APP_ID,
        "type": 2,
        "token": f"token-{ident}",
        "version": 1,
        "guild_id": "5500000000000000001",
        "channel_id": channel,
        "member": {"user": {"id": user, "username": "someone"}, "roles": []},
        "data": {
            "id": "6600000000000000001",
            "name": command,
            "type": 1,
            "options": [
                {"name": k, "type": 3, "value": v} for k, v in (options or {"prompt": "a cat"}).items()
            ],
        },
    }


def ping() -> dict[str, Any]:
    return {"id": str(next(_ids)), "application_id": APP_ID, "type": 1, "token": "ping", "version": 1}


def discord_section(public_key: str, api_base: str, **extra: Any) -> dict[str, Any]:
    return {
        "application_id": APP_ID,
        "public_key": public_key,
        "api_base": api_base,
        "commands": {
            "imagine": {
                "service": "draw",
                "description": "Draw a picture",
                "options": {
                    "prompt": {"field": "prompt", "description": "What to draw"},
                    "seed": {"field": "seed", "type": "integer", "required": False},
                },
                "defaults": {"steps": 2},
            },
            "ask": {"service": "chat", "description": "Ask something", "options": {"question": "text"}},
            "small": {
                "service": "tiny",
                "description": "A service with room for one job",
                "options": {"prompt": "prompt"},
            },
        },
        "channels": {ROUTED_CHANNEL: "draw-fast"},
        "progress_every_seconds": 1.0,
        **extra,
    }


def config_for(
    public_key: str,
    api_base: str,
    *,
    function: str = "builtins:dict",
    gateway: dict[str, Any] | None = None,
    **extra: Any,
) -> SwellConfig:
    services = [
        {"name": name, "engine": "callable", "options": {"function": function}, "lease_seconds": 5}
        for name in ("draw", "draw-fast", "chat")
    ]
    services.append(
        {"name": "tiny", "engine": "callable", "options": {"function": "builtins:dict"}, "queue_limit": 1}
    )
    raw: dict[str, Any] = {"services": services, "discord": discord_section(public_key, api_base, **extra)}
    if gateway is not None:
        raw["gateway"] = gateway
    return parse_config(raw)


@dataclass
class Door:
    """The gateway with the Discord door, over a real SQLite file, reached in-process."""

    app: Any
    queue: QueueBackend
    signer: Signer
    api: StandIn

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://swell.test")

    async def send(
        self, http: httpx.AsyncClient, payload: Any, timestamp: int | None = None
    ) -> httpx.Response:
        body = json.dumps(payload).encode()
        return await http.post(
            "/discord/interactions", content=body, headers=self.signer.headers(body, timestamp)
        )


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    with discord_api() as api:
        yield api


@pytest.fixture
def make_door(tmp_path: Path, signer: Signer, stand_in: StandIn) -> Iterator[Any]:
    queues: list[QueueBackend] = []

    def make(**extra: Any) -> Door:
        config = config_for(signer.public_hex, stand_in.api_base, **extra)
        queue = open_queue(f"sqlite:///{tmp_path}/swell-{len(queues)}.db")
        queues.append(queue)
        app = create_app(config, Settings(data_dir=tmp_path, api_key="k"), queue)
        return Door(app, queue, signer, stand_in)

    yield make
    for queue in queues:
        queue.close()


@pytest.fixture
async def door(make_door: Any) -> AsyncIterator[Door]:
    yield make_door()
