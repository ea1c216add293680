"""Signed webhooks delivered to a real HTTP receiver on loopback, with retries on virtual time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from swell.core.clock import ManualClock
from swell.core.errors import Conflict
from swell.core.jobs import Job, JobSpec, RetryPolicy, WebhookState
from swell.gateway.webhooks import REPLAY_WINDOW, WebhookDispatcher, payload, sign, verify
from swell.queue.base import QueueBackend, open_queue
from tests.gateway.helpers import MakeGateway
from tests.gateway.receiver import Receiver, webhook_receiver
from tests.support import free_port

pytestmark = pytest.mark.anyio

SECRET = "webhook-secret"
START = 1_700_000_000.0
LOOPBACK = frozenset({"127.0.0.1:*"})
DOCS = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


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
    at = 1_700_000_000
    signature = sign(body, SECRET, at)
    assert re.fullmatch(r"t=1700000000,v1=[0-9a-f]{64}", signature)
    assert verify(body, signature, SECRET, now=at)
    assert verify(body, signature, SECRET, timestamp="1700000000", now=at + REPLAY_WINDOW)
    assert not verify(body + b" ", signature, SECRET, now=at)
    assert not verify(body, signature, "other-secret", now=at)
    assert not verify(body, signature, SECRET, timestamp=at + 1, now=at), "the timestamps disagree"
    assert not verify(body, "t=1700000000,v1=é", SECRET, now=at)
    assert not verify(body, signature.split(",")[1], SECRET, now=at), "no timestamp"
    assert not verify(body, f"t=1700000001,{signature.split(',')[1]}", SECRET, now=at), "moved in time"


@pytest.mark.parametrize("skew", [-REPLAY_WINDOW - 1, REPLAY_WINDOW + 1, 10 * REPLAY_WINDOW])
def test_stale_and_future_signatures_are_refused(skew: float) -> None:
    body = b"{}"
    at = 1_700_000_000
    assert not verify(body, sign(body, SECRET, at), SECRET, now=at + skew)
    assert verify(body, sign(body, SECRET, at), SECRET, now=at + skew, tolerance=abs(skew))


def test_any_of_several_signatures_may_match() -> None:
    body = b"{}"
    at = int(time.time())
    mine = sign(body, SECRET, at).split(",")[1]
    assert verify(body, f"t={at},v1={'0' * 64},{mine}", SECRET)
    assert verify(body, {"x-swell-signature": f"t={at},{mine}", "X-SWELL-TIMESTAMP": str(at)}, SECRET)
    assert not verify(body, {"X-Swell-Signature": f"t={at},{mine}", "X-Swell-Timestamp": "1"}, SECRET)
    assert not verify(body, {}, SECRET)


def docs_example() -> Callable[..., bool]:
    """The verification example of docs/webhooks.md, run as written."""
    text = DOCS.read_text()
    [code] = re.findall(r"<!-- verify-example -->\n```python\n(.*?)```", text, flags=re.S)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    verifier: Callable[..., bool] = namespace["verify_swell_webhook"]
    return verifier


async def test_the_documented_example_verifies_real_deliveries(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    check = docs_example()
    job = finished_job(queue, f"{receiver.url}/hook", {"answer": 42})
    await dispatcher(queue, clock).deliver(job)
    [got] = receiver.deliveries
    now = clock.now()
    assert got.headers["X-Swell-Timestamp"] == str(int(now))
    assert check(got.body, got.headers, SECRET, now=now)
    assert check(got.body, got.headers, SECRET, now=now + 300)
    assert not check(got.body, got.headers, SECRET, now=now + 301), "a replay after the window"
    assert not check(got.body, got.headers, SECRET, now=now - 301), "from the future"
    assert not check(got.body + b" ", got.headers, SECRET, now=now)
    assert not check(got.body, got.headers, "other-secret", now=now)
    moved = {**got.headers, "X-Swell-Timestamp": str(int(now) + 60)}
    assert not check(got.body, moved, SECRET, now=now), "a timestamp that was not signed"
    assert verify(got.body, got.headers, SECRET, now=now)


async def test_a_delivery_is_signed_and_recorded(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    job = finished_job(queue, f"{receiver.url}/hook?x=1", {"answer": 42})
    delivered = await dispatcher(queue, clock).deliver(job)

    [got] = receiver.deliveries
    assert got.path == "/hook?x=1"
    assert json.loads(got.body) == {"id": job.id, "state": "succeeded", "result": {"answer": 42}}
    assert verify(got.body, got.headers["X-Swell-Signature"], SECRET, now=clock.now())
    assert got.headers["X-Swell-Timestamp"] == str(int(START))
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
    assert all(verify(d.body, d.headers, SECRET, now=START) for d in receiver.deliveries)


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


class StaleReads:
    """A queue whose `due_webhooks` answers what was due when the read began, `lag` seconds later:
    the widest form of the race between a read in a thread and a delivery that ends meanwhile."""

    def __init__(self, queue: QueueBackend, lag: float) -> None:
        self._queue, self.lag, self.reads = queue, lag, 0

    def due_webhooks(self, limit: int = 100) -> list[Job]:
        due = self._queue.due_webhooks(limit)
        self.reads += 1
        time.sleep(self.lag)
        return due

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


async def run_until_delivered(dispatch: WebhookDispatcher, queue: QueueBackend, jobs: list[Job]) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(dispatch.run(stop))
    for _ in range(400):
        if all(queue.get(j.id).webhook_state is WebhookState.DELIVERED for j in jobs):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # idle polls, and reads begun before the last outcome was saved, end
    stop.set()
    await asyncio.wait_for(running, timeout=5)
    dispatch.close()


@pytest.mark.parametrize("concurrency", [32, 3])
async def test_n_due_webhooks_make_exactly_n_deliveries_and_no_errors(
    queue: QueueBackend,
    clock: ManualClock,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    concurrency: int,
) -> None:
    receiver.delay = 0.01
    jobs = [finished_job(queue, f"{receiver.url}/hook/{n}") for n in range(100)]
    dispatch = dispatcher(queue, clock, concurrency=concurrency)
    with caplog.at_level(logging.WARNING, logger="swell.webhooks"):
        await run_until_delivered(dispatch, queue, jobs)

    ids = [d.headers["X-Swell-Job-Id"] for d in receiver.deliveries]
    assert sorted(ids) == sorted(j.id for j in jobs), "each job's webhook exactly once"
    assert [r.getMessage() for r in caplog.records] == []
    assert dispatch.delivered == 100 and all(queue.get(j.id).webhook_attempts == 1 for j in jobs)


async def test_a_read_that_races_a_finished_delivery_sends_nothing_twice(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = [finished_job(queue, f"{receiver.url}/hook/{n}") for n in range(12)]
    stale = StaleReads(queue, lag=0.2)
    dispatch = dispatcher(stale, clock, concurrency=4)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="swell.webhooks"):
        await run_until_delivered(dispatch, queue, jobs)

    ids = [d.headers["X-Swell-Job-Id"] for d in receiver.deliveries]
    assert sorted(ids) == sorted(j.id for j in jobs)
    assert stale.reads > 3 and caplog.records == []


async def test_queue_reads_leave_the_event_loop_free(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    """The read blocks until a coroutine on the loop releases it: run on the loop, it never would."""
    reading, released = threading.Event(), threading.Event()

    class Blocking(StaleReads):
        def due_webhooks(self, limit: int = 100) -> list[Job]:
            reading.set()
            assert released.wait(10), "the event loop was blocked by the read"
            return super().due_webhooks(limit)

    job = finished_job(queue, f"{receiver.url}/hook")
    dispatch = dispatcher(Blocking(queue, lag=0.0), clock)  # type: ignore[arg-type]

    async def release() -> None:
        while not reading.is_set():
            await asyncio.sleep(0.01)
        released.set()

    await asyncio.gather(run_until_delivered(dispatch, queue, [job]), release())
    assert [d.headers["X-Swell-Job-Id"] for d in receiver.deliveries] == [job.id]


async def test_retries_are_signed_at_the_time_of_each_try(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    receiver.statuses = [500]
    job = finished_job(queue, f"{receiver.url}/hook")
    dispatch = dispatcher(queue, clock)
    await deliver_due(dispatch, queue)
    clock.advance(3600)
    await deliver_due(dispatch, queue)
    first, second = receiver.deliveries
    assert int(second.headers["X-Swell-Timestamp"]) - int(first.headers["X-Swell-Timestamp"]) == 3600
    assert not verify(first.body, first.headers, SECRET, now=clock.now()), "the first try is stale now"
    assert verify(second.body, second.headers, SECRET, now=clock.now())
    assert queue.get(job.id).webhook_state is WebhookState.DELIVERED


async def test_a_callback_with_control_characters_is_refused_for_good(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    job = finished_job(queue, f"{receiver.url}/hook")
    hostile = dataclasses.replace(job, callback_url=f"{receiver.url}/hook\r\nX-Injected: 1")
    failed = await dispatcher(queue, clock).deliver(hostile)
    assert failed.webhook_state is WebhookState.FAILED and failed.webhook_attempts == 1
    assert "character" in (failed.webhook_error or "") and receiver.deliveries == []
