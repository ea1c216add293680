"""`POST /discord/interactions` in the gateway over a real SQLite file: signed requests from a real
key pair, PING, refusals of anything unsigned, stale or replayed, and commands answered deferred with
a durable job, or refused ephemerally."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swell.core.config import Settings, parse_config
from swell.core.jobs import Job
from swell.gateway.app import create_app
from swell.queue.base import open_queue
from tests.gateway.discord.conftest import (
    APP_ID,
    CHANNEL_ID,
    ROUTED_CHANNEL,
    Door,
    Signer,
    config_for,
    interaction,
    ping,
)

pytestmark = pytest.mark.anyio

EPHEMERAL = 64


def jobs(door: Door, service: str = "draw") -> list[Job]:
    return door.queue.jobs(service=service, limit=100)


def refused(response: httpx.Response) -> str:
    """The text of an ephemeral refusal (type 4, flags 64)."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == 4 and body["data"]["flags"] == EPHEMERAL, body
    return str(body["data"]["content"])


# -- signatures --------------------------------------------------------------------------------------


async def test_a_signed_ping_gets_pong(door: Door) -> None:
    async with door.client() as http:
        response = await door.send(http, ping())
    assert response.status_code == 200 and response.json() == {"type": 1}


async def test_anything_not_signed_by_the_application_is_a_401(door: Door) -> None:
    body = json.dumps(ping()).encode()
    good = door.signer.headers(body)
    forged = Signer(Ed25519PrivateKey.generate()).headers(body)
    cases: list[tuple[bytes, dict[str, str]]] = [
        (body, forged),  # another key
        (body + b" ", good),  # the body changed after signing
        (body, {k: v for k, v in good.items() if k != "X-Signature-Ed25519"}),
        (body, {k: v for k, v in good.items() if k != "X-Signature-Timestamp"}),
        (body, {"Content-Type": "application/json"}),
        (body, {**good, "X-Signature-Ed25519": "not hex"}),
        (body, {**good, "X-Signature-Timestamp": str(int(good["X-Signature-Timestamp"]) - 1)}),
        (b"not json", door.signer.headers(b"not json", int(time.time()) - 3600)),
    ]
    async with door.client() as http:
        for content, headers in cases:
            response = await http.post("/discord/interactions", content=content, headers=headers)
            assert response.status_code == 401, (headers, response.text)
        assert (await http.post("/discord/interactions", content=body, headers=good)).json() == {"type": 1}


async def test_a_stale_or_future_timestamp_is_a_401(door: Door) -> None:
    async with door.client() as http:
        stale = await door.send(http, ping(), timestamp=int(time.time()) - 120)
        future = await door.send(http, ping(), timestamp=int(time.time()) + 120)
    assert stale.status_code == 401 and future.status_code == 401


async def test_a_replayed_interaction_is_a_401_and_makes_no_second_job(door: Door) -> None:
    payload = interaction()
    body = json.dumps(payload).encode()
    headers = door.signer.headers(body)
    async with door.client() as http:
        first = await http.post("/discord/interactions", content=body, headers=headers)
        again = await http.post("/discord/interactions", content=body, headers=headers)
    assert first.json() == {"type": 5}
    assert again.status_code == 401
    assert len(jobs(door)) == 1


async def test_without_a_discord_section_the_path_is_a_404(tmp_path: Any, signer: Signer) -> None:
    config = parse_config(
        {"services": [{"name": "s", "engine": "callable", "options": {"function": "builtins:dict"}}]}
    )
    queue = open_queue(f"sqlite:///{tmp_path}/plain.db")
    app = create_app(config, Settings(data_dir=tmp_path, api_key="k"), queue)
    body = json.dumps(ping()).encode()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        response = await http.post("/discord/interactions", content=body, headers=signer.headers(body))
    queue.close()
    assert response.status_code == 404


# -- commands ----------------------------------------------------------------------------------------


async def test_a_command_is_deferred_once_its_job_is_durable(door: Door) -> None:
    payload = interaction(options={"prompt": "a red fox", "seed": 7})
    payload["data"]["options"][1]["type"] = 4
    async with door.client() as http:
        response = await door.send(http, payload)
    assert response.status_code == 200 and response.json() == {"type": 5}
    (job,) = jobs(door)
    assert job.input == {"steps": 2, "prompt": "a red fox", "seed": 7}
    assert job.idempotency_key == f"discord:{payload['id']}" and job.tenant == "discord:4400000000000000001"
    (row,) = door.queue.deliveries(job.id)
    assert row.channel == "discord" and row.state.value == "waiting"
    assert dict(row.target) == {
        "application_id": APP_ID,
        "token": payload["token"],
        "channel_id": CHANNEL_ID,
        "user_id": "4400000000000000001",
        "interaction_id": payload["id"],
    }
    assert row.expires_at == pytest.approx(time.time() + 900, abs=30)


async def test_a_routed_channel_goes_to_its_service(door: Door) -> None:
    async with door.client() as http:
        response = await door.send(http, interaction(channel=ROUTED_CHANNEL))
    assert response.json() == {"type": 5}
    assert len(jobs(door, "draw-fast")) == 1 and jobs(door) == []


async def test_refusals_are_ephemeral_and_name_the_option(door: Door) -> None:
    async with door.client() as http:
        unknown = refused(await door.send(http, interaction("paint")))
        extra = refused(await door.send(http, interaction(options={"prompt": "x", "style": "y"})))
        missing = refused(await door.send(http, interaction(options={"seed": "1"})))
    assert "unknown command /paint" in unknown
    assert "'style'" in extra and "'prompt'" in missing
    assert jobs(door) == []


async def test_a_request_the_filter_refuses_is_told_ephemerally(make_door: Any) -> None:
    door = make_door(gateway={"filter": {"blocked_terms": ["forbiddenword"]}})
    async with door.client() as http:
        text = refused(await door.send(http, interaction(options={"prompt": "a forbiddenword cat"})))
    assert text.startswith("option `prompt` holds a blocked term")  # the option, not `input.prompt`
    assert jobs(door) == []


async def test_a_full_service_is_busy_with_when_to_retry(door: Door) -> None:
    async with door.client() as http:
        first = await door.send(http, interaction("small", {"prompt": "a"}, user="1"))
        second = refused(await door.send(http, interaction("small", {"prompt": "b"}, user="2")))
    assert first.json() == {"type": 5}
    assert "busy" in second and "try again in" in second


async def test_a_user_over_the_rate_is_told_and_others_are_not(make_door: Any) -> None:
    door = make_door(per_user_rate=2, per_user_concurrency=10)
    async with door.client() as http:
        answers = [await door.send(http, interaction(user="7")) for _ in range(3)]
        other = await door.send(http, interaction(user="8"))
    assert [a.json().get("type") for a in answers[:2]] == [5, 5]
    assert "too fast" in refused(answers[2])
    assert other.json() == {"type": 5}


async def test_a_user_at_the_concurrency_cap_waits_for_a_job_to_finish(make_door: Any) -> None:
    door = make_door(per_user_rate=100, per_user_concurrency=1)
    async with door.client() as http:
        first = await door.send(http, interaction(user="9"))
        blocked = await door.send(http, interaction(user="9"))
        assert first.json() == {"type": 5}
        assert "already have 1 job" in refused(blocked)
        (job,) = door.queue.lease("draw", "w", max_jobs=1)
        door.queue.complete(job.id, "w", {"text": "done"})
        after = await door.send(http, interaction(user="9"))
    assert after.json() == {"type": 5}


async def test_a_repeat_after_a_restart_makes_no_second_job(
    make_door: Any, tmp_path: Any, signer: Signer
) -> None:
    door = make_door()
    payload = interaction()
    async with door.client() as http:
        assert (await door.send(http, payload)).json() == {"type": 5}
    config = config_for(signer.public_hex, door.api.api_base)
    restarted = Door(
        create_app(config, Settings(data_dir=tmp_path, api_key="k"), door.queue), door.queue, signer, door.api
    )
    async with restarted.client() as http:
        assert (await restarted.send(http, payload)).json() == {"type": 5}  # a new process forgot the id
    assert len(jobs(door)) == 1


async def test_the_deferred_answer_is_quick(door: Door) -> None:
    """Not a speed claim (bench/discord.py measures that): a guard that nothing waits on the job."""
    async with door.client() as http:
        await door.send(http, interaction())
        started = time.monotonic()
        response = await door.send(http, interaction())
        took = time.monotonic() - started
    assert response.json() == {"type": 5} and took < 2.5
