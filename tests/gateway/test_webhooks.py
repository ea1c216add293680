"""Signed webhooks delivered to a real HTTP receiver on loopback, with retries on virtual time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swell.core.clock import ManualClock
from swell.core.errors import Conflict
from swell.core.jobs import Job, JobSpec, RetryPolicy, WebhookState
from swell.gateway.webhooks import WebhookDispatcher, payload, sign, verify
from swell.queue.base import QueueBackend, open_queue
from tests.gateway.helpers import MakeGateway
from tests.gateway.receiver import Receiver, webhook_receiver
from tests.support import free_port

pytestmark = pytest.mark.anyio

SECRET = "webhook-secret"
START = 1_700_000_000.0
LOOPBACK = frozenset({"127.0.0.1"})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def queue(tmp_path: Path, clock: ManualClock) -> Iterator[QueueBackend]:
    queue = open_queue(f"sqlite:///{tmp_path}/swell.db", clock=clock)
    yield queue
    queue.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as receiver:
        yield receiver


def finished_job(queue: QueueBackend, url: str, result: dict[str, Any] | None = None) -> Job:
    """A job that succeeded, so its webhook is due now."""
    job, _ = queue.submit(JobSpec(service="svc", input={"n": 1}, callback_url=url))
    [leased] = queue.lease("svc", "w", max_jobs=1)
    assert leased.id == job.id
    return queue.complete(job.id, "w", result or {"n": 2})


def dispatcher(queue: QueueBackend, clock: ManualClock, **options: Any) -> WebhookDispatcher:
    defaults: dict[str, Any] = {
        "clock": clock,
        "allow_hosts": LOOPBACK,
        "max_attempts": 4,
        "timeout": 5.0,
        "policy": RetryPolicy(backoff_base=1.0, backoff_cap=60.0),
    }
    return WebhookDispatcher(queue, SECRET, **{**defaults, **options})


async def deliver_due(dispatch: WebhookDispatcher, queue: QueueBackend) -> list[Job]:
    return [await dispatch.deliver(job) for job in queue.due_webhooks()]


def test_sign_and_verify() -> None:
    body = b'{"id":"1","state":"succeeded"}'
    signature = sign(body, SECRET)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify(body, signature, SECRET)
    assert not verify(body + b" ", signature, SECRET)
    assert not verify(body, signature, "other-secret")
    assert not verify(body, "sha256=é", SECRET)


async def test_a_delivery_is_signed_and_recorded(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    job = finished_job(queue, f"{receiver.url}/hook?x=1", {"answer": 42})
    delivered = await dispatcher(queue, clock).deliver(job)

    [got] = receiver.deliveries
    assert got.path == "/hook?x=1"
    assert json.loads(got.body) == {"id": job.id, "state": "succeeded", "result": {"answer": 42}}
    assert verify(got.body, got.headers["X-Swell-Signature"], SECRET)
    assert got.headers["X-Swell-Job-Id"] == job.id
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == "swell"
    stored = queue.get(job.id)
    assert stored.webhook_state is delivered.webhook_state is WebhookState.DELIVERED
    assert stored.webhook_attempts == 1 and queue.due_webhooks() == []


async def test_retries_back_off_then_succeed(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503]
    job = finished_job(queue, f"{receiver.url}/hook")
    dispatch = dispatcher(queue, clock)

    [first] = await deliver_due(dispatch, queue)
    assert (first.webhook_state, first.webhook_attempts, first.webhook_next_at) == (
        WebhookState.PENDING,
        1,
        START + 1,
    )
    assert "500" in (first.webhook_error or "")
    clock.advance(0.5)
    assert await deliver_due(dispatch, queue) == [], "not before its back-off"
    clock.advance(0.5)
    [second] = await deliver_due(dispatch, queue)
    assert second.webhook_next_at == clock.now() + 2
    clock.advance(2)
    [third] = await deliver_due(dispatch, queue)

    assert third.webhook_state is WebhookState.DELIVERED and third.webhook_attempts == 3
    assert queue.get(job.id).to_public()["webhook"] == {"state": "delivered", "attempts": 3, "error": None}
    bodies = {d.body for d in receiver.deliveries}
    assert len(receiver.deliveries) == 3 and bodies == {payload(job)}


async def test_gives_up_after_max_attempts(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    receiver.statuses = [500] * 10
    job = finished_job(queue, f"{receiver.url}/hook")
    dispatch = dispatcher(queue, clock, max_attempts=3)
    for _ in range(3):
        await deliver_due(dispatch, queue)
        clock.advance(60)
    stored = queue.get(job.id)
    assert (stored.webhook_state, stored.webhook_attempts) == (WebhookState.FAILED, 3)
    assert "HTTP 500" in (stored.webhook_error or "")
    assert queue.due_webhooks() == [] and len(receiver.deliveries) == 3


async def test_a_url_that_now_points_inside_is_refused_for_good(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    job = finished_job(queue, f"{receiver.url}/hook")
    failed = await dispatcher(queue, clock, allow_hosts=frozenset()).deliver(job)
    assert failed.webhook_state is WebhookState.FAILED and failed.webhook_attempts == 1
    assert "refused" in (failed.webhook_error or "") and receiver.deliveries == []


async def test_redirects_are_not_followed(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    receiver.statuses = [302]
    job = finished_job(queue, f"{receiver.url}/hook")
    failed = await dispatcher(queue, clock).deliver(job)
    assert failed.webhook_state is WebhookState.PENDING and "redirect" in (failed.webhook_error or "")
    assert [d.path for d in receiver.deliveries] == ["/hook"]


async def test_a_slow_receiver_times_out(queue: QueueBackend, clock: ManualClock, receiver: Receiver) -> None:
    receiver.delay = 1.0
    job = finished_job(queue, f"{receiver.url}/hook")
    failed = await dispatcher(queue, clock, timeout=0.2).deliver(job)
    assert failed.webhook_state is WebhookState.PENDING and "Timeout" in (failed.webhook_error or "")


async def test_no_second_delivery_while_one_is_in_flight(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    receiver.delay = 0.3
    job = finished_job(queue, f"{receiver.url}/hook")
    dispatch = dispatcher(queue, clock)
    first = asyncio.create_task(dispatch.deliver(job))
    await asyncio.sleep(0.05)
    with pytest.raises(Conflict):
        await dispatch.deliver(job)
    assert (await first).webhook_state is WebhookState.DELIVERED
    assert len(receiver.deliveries) == 1


async def test_run_delivers_each_due_webhook_once_and_stops_promptly(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    receiver.delay = 0.02
    jobs = [finished_job(queue, f"{receiver.url}/hook/{n}") for n in range(30)]
    dispatch = dispatcher(queue, clock, concurrency=4)
    stop = asyncio.Event()
    running = asyncio.create_task(dispatch.run(stop))
    for _ in range(200):
        if all(queue.get(j.id).webhook_state is WebhookState.DELIVERED for j in jobs):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # a few idle polls: nothing is sent twice
    stop.set()
    await asyncio.wait_for(running, timeout=2)

    ids = [d.headers["X-Swell-Job-Id"] for d in receiver.deliveries]
    assert sorted(ids) == sorted(j.id for j in jobs)
    assert all(verify(d.body, d.headers["X-Swell-Signature"], SECRET) for d in receiver.deliveries)


async def test_submit_to_delivery_through_the_gateway(make_gateway: MakeGateway, receiver: Receiver) -> None:
    gateway = make_gateway(callback_allow_hosts=LOOPBACK)
    async with gateway.client() as client:
        submitted = await client.post(
            "/v1/jobs", json={"service": "echo", "input": {"n": 1}, "callback_url": f"{receiver.url}/done"}
        )
        assert submitted.status_code == 202
        [leased] = gateway.queue.lease("echo", "w", max_jobs=1)
        gateway.queue.complete(leased.id, "w", {"n": 2})
        stop = asyncio.Event()
        running = asyncio.create_task(
            WebhookDispatcher(gateway.queue, SECRET, allow_hosts=LOOPBACK).run(stop)
        )
        for _ in range(100):
            shown = (await client.get(f"/v1/jobs/{leased.id}")).json()
            if shown["webhook"]["state"] == "delivered":
                break
            await asyncio.sleep(0.05)
        stop.set()
        await running
    assert shown["webhook"] == {"state": "delivered", "attempts": 1, "error": None}
    [got] = receiver.deliveries
    assert json.loads(got.body) == {"id": leased.id, "state": "succeeded", "result": {"n": 2}}


async def test_a_receiver_that_is_down_is_retried_later(queue: QueueBackend, clock: ManualClock) -> None:
    job = finished_job(queue, f"http://127.0.0.1:{free_port()}/hook")
    failed = await dispatcher(queue, clock).deliver(job)
    assert (failed.webhook_state, failed.webhook_next_at) == (WebhookState.PENDING, START + 1)
    assert "ConnectError" in (failed.webhook_error or "")
    assert queue.get(job.id).webhook_error == failed.webhook_error
