"""Signed webhooks delivered to a real HTTP receiver on loopback through the outbox dispatcher, with
retries on virtual time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from swell.core.clock import ManualClock
from swell.core.errors import Conflict
from swell.core.jobs import Delivery, DeliveryState, Job, JobSpec, RetryPolicy
from swell.gateway.outbox import Dispatcher
from swell.gateway.webhooks import REPLAY_WINDOW, WebhookChannel, payload, sign, verify
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


def dispatcher(
    queue: QueueBackend,
    clock: ManualClock,
    *,
    allow_hosts: frozenset[str] = LOOPBACK,
    timeout: float = 5.0,
    **options: Any,
) -> Dispatcher:
    """The outbox dispatcher with the webhook channel alone, as `create_app` builds it."""
    channel = WebhookChannel(SECRET, clock=clock, allow_hosts=allow_hosts, timeout=timeout)
    defaults: dict[str, Any] = {
        "clock": clock,
        "max_attempts": 4,
        "policy": RetryPolicy(backoff_base=1.0, backoff_cap=60.0),
    }
    return Dispatcher(queue, {"webhook": channel}, **{**defaults, **options})


def hook(queue: QueueBackend, job: Job) -> Delivery:
    """The job's webhook row, as stored now."""
    [row] = queue.deliveries(job.id)
    return row


async def deliver(dispatch: Dispatcher, queue: QueueBackend, job: Job) -> Delivery:
    """One try of the job's webhook now."""
    return await dispatch.deliver(hook(queue, job), queue.get(job.id))


async def deliver_due(dispatch: Dispatcher, queue: QueueBackend) -> list[Delivery]:
    return [await dispatch.deliver(row, job) for row, job in queue.due_deliveries()]


def delivered(queue: QueueBackend, job: Job) -> bool:
    return hook(queue, job).state is DeliveryState.DELIVERED


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
    await deliver(dispatcher(queue, clock), queue, job)
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
    done = await deliver(dispatcher(queue, clock), queue, job)

    [got] = receiver.deliveries
    assert got.path == "/hook?x=1"
    assert json.loads(got.body) == {"id": job.id, "state": "succeeded", "result": {"answer": 42}}
    assert verify(got.body, got.headers["X-Swell-Signature"], SECRET, now=clock.now())
    assert got.headers["X-Swell-Timestamp"] == str(int(START))
    assert got.headers["X-Swell-Job-Id"] == job.id
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == "swell"
    stored = hook(queue, job)
    assert stored.state is done.state is DeliveryState.DELIVERED
    assert stored.attempts == 1 and queue.due_deliveries() == []


async def test_retries_back_off_then_succeed(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503]
    job = finished_job(queue, f"{receiver.url}/hook")
    dispatch = dispatcher(queue, clock)

    [first] = await deliver_due(dispatch, queue)
    assert (first.state, first.attempts, first.next_at) == (DeliveryState.PENDING, 1, START + 1)
    assert "500" in (first.error or "")
    clock.advance(0.5)
    assert await deliver_due(dispatch, queue) == [], "not before its back-off"
    clock.advance(0.5)
    [second] = await deliver_due(dispatch, queue)
    assert second.next_at == clock.now() + 2
    clock.advance(2)
    [third] = await deliver_due(dispatch, queue)

    assert third.state is DeliveryState.DELIVERED and third.attempts == 3
    assert hook(queue, job).to_public() == {"state": "delivered", "attempts": 3, "error": None}
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
    stored = hook(queue, job)
    assert (stored.state, stored.attempts) == (DeliveryState.FAILED, 3)
    assert "HTTP 500" in (stored.error or "")
    assert queue.due_deliveries() == [] and len(receiver.deliveries) == 3 and dispatch.failed == 1


async def test_a_url_that_now_points_inside_is_refused_for_good(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    job = finished_job(queue, f"{receiver.url}/hook")
    failed = await deliver(dispatcher(queue, clock, allow_hosts=frozenset()), queue, job)
    assert failed.state is DeliveryState.FAILED and failed.attempts == 1
    assert "refused" in (failed.error or "") and receiver.deliveries == []


async def test_redirects_are_not_followed(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    receiver.statuses = [302]
    job = finished_job(queue, f"{receiver.url}/hook")
    failed = await deliver(dispatcher(queue, clock), queue, job)
    assert failed.state is DeliveryState.PENDING and "redirect" in (failed.error or "")
    assert [d.path for d in receiver.deliveries] == ["/hook"]


async def test_a_slow_receiver_times_out(queue: QueueBackend, clock: ManualClock, receiver: Receiver) -> None:
    receiver.delay = 1.0
    job = finished_job(queue, f"{receiver.url}/hook")
    failed = await deliver(dispatcher(queue, clock, timeout=0.2), queue, job)
    assert failed.state is DeliveryState.PENDING and "Timeout" in (failed.error or "")


async def test_no_second_delivery_while_one_is_in_flight(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    receiver.delay = 0.3
    job = finished_job(queue, f"{receiver.url}/hook")
    dispatch = dispatcher(queue, clock)
    first = asyncio.create_task(deliver(dispatch, queue, job))
    await asyncio.sleep(0.05)
    with pytest.raises(Conflict):
        await deliver(dispatch, queue, job)
    assert (await first).state is DeliveryState.DELIVERED
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
        if all(delivered(queue, j) for j in jobs):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # a few idle polls: nothing is sent twice
    stop.set()
    await asyncio.wait_for(running, timeout=2)

    ids = [d.headers["X-Swell-Job-Id"] for d in receiver.deliveries]
    assert sorted(ids) == sorted(j.id for j in jobs)
    assert all(verify(d.body, d.headers, SECRET, now=START) for d in receiver.deliveries)


async def test_submit_to_delivery_through_the_gateway(make_gateway: MakeGateway, receiver: Receiver) -> None:
    """The app's own dispatcher (`create_app` builds it with the webhook channel) delivers."""
    gateway = make_gateway(callback_allow_hosts=LOOPBACK, webhook_secret=SECRET)
    async with gateway.client() as client:
        submitted = await client.post(
            "/v1/jobs", json={"service": "echo", "input": {"n": 1}, "callback_url": f"{receiver.url}/done"}
        )
        assert submitted.status_code == 202
        assert submitted.json()["webhook"] == {"state": "waiting", "attempts": 0, "error": None}
        [leased] = gateway.queue.lease("echo", "w", max_jobs=1)
        gateway.queue.complete(leased.id, "w", {"n": 2})
        shown = (await client.get(f"/v1/jobs/{leased.id}")).json()
        assert shown["webhook"] == {"state": "pending", "attempts": 0, "error": None}
        stop = asyncio.Event()
        dispatch: Dispatcher = gateway.app.state.dispatcher
        running = asyncio.create_task(dispatch.run(stop))
        for _ in range(100):
            shown = (await client.get(f"/v1/jobs/{leased.id}")).json()
            if shown["webhook"]["state"] == "delivered":
                break
            await asyncio.sleep(0.05)
        stop.set()
        await running
    assert shown["webhook"] == {"state": "delivered", "attempts": 1, "error": None}
    assert shown["deliveries"] == [{"channel": "webhook", "state": "delivered", "attempts": 1, "error": None}]
    [got] = receiver.deliveries
    assert json.loads(got.body) == {"id": leased.id, "state": "succeeded", "result": {"n": 2}}
    assert verify(got.body, got.headers, SECRET)


async def test_a_receiver_that_is_down_is_retried_later(queue: QueueBackend, clock: ManualClock) -> None:
    job = finished_job(queue, f"http://127.0.0.1:{free_port()}/hook")
    failed = await deliver(dispatcher(queue, clock), queue, job)
    assert (failed.state, failed.next_at) == (DeliveryState.PENDING, START + 1)
    assert "ConnectError" in (failed.error or "")
    assert hook(queue, job).error == failed.error


class StaleReads:
    """A queue whose `due_deliveries` answers what was due when the read began, `lag` seconds later:
    the widest form of the race between a read in a thread and a delivery that ends meanwhile."""

    def __init__(self, queue: QueueBackend, lag: float) -> None:
        self._queue, self.lag, self.reads = queue, lag, 0

    def due_deliveries(
        self, now: float | None = None, limit: int = 100, channels: Sequence[str] | None = None
    ) -> list[tuple[Delivery, Job]]:
        due = self._queue.due_deliveries(now, limit, channels)
        self.reads += 1
        time.sleep(self.lag)
        return due

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


async def run_until_delivered(dispatch: Dispatcher, queue: QueueBackend, jobs: list[Job]) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(dispatch.run(stop))
    for _ in range(400):
        if all(delivered(queue, j) for j in jobs):
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
    with caplog.at_level(logging.WARNING, logger="swell.outbox"):
        await run_until_delivered(dispatch, queue, jobs)

    ids = [d.headers["X-Swell-Job-Id"] for d in receiver.deliveries]
    assert sorted(ids) == sorted(j.id for j in jobs), "each job's webhook exactly once"
    assert [r.getMessage() for r in caplog.records] == []
    assert dispatch.delivered == 100 and all(hook(queue, j).attempts == 1 for j in jobs)


async def test_a_read_that_races_a_finished_delivery_sends_nothing_twice(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = [finished_job(queue, f"{receiver.url}/hook/{n}") for n in range(12)]
    stale = StaleReads(queue, lag=0.2)
    dispatch = dispatcher(stale, clock, concurrency=4)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="swell.outbox"):
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
        def due_deliveries(
            self, now: float | None = None, limit: int = 100, channels: Sequence[str] | None = None
        ) -> list[tuple[Delivery, Job]]:
            reading.set()
            assert released.wait(10), "the event loop was blocked by the read"
            return super().due_deliveries(now, limit, channels)

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
    assert delivered(queue, job)


async def test_a_callback_with_control_characters_is_refused_for_good(
    queue: QueueBackend, clock: ManualClock, receiver: Receiver
) -> None:
    job = finished_job(queue, f"{receiver.url}/hook")
    hostile = dataclasses.replace(hook(queue, job), target={"url": f"{receiver.url}/hook\r\nX-Injected: 1"})
    failed = await dispatcher(queue, clock).deliver(hostile, job)
    assert failed.state is DeliveryState.FAILED and failed.attempts == 1
    assert "character" in (failed.error or "") and receiver.deliveries == []


@dataclasses.dataclass
class RateLimited:
    url: str
    answered: list[int] = dataclasses.field(default_factory=list)


@contextmanager
def rate_limited(retry_after: str, times: int) -> Iterator[RateLimited]:
    """A receiver on loopback that answers 429 with `Retry-After: <retry_after>` `times` times, then
    204, recording each status it answered."""
    limited = RateLimited(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = 429 if len(limited.answered) < times else 204
            limited.answered.append(status)
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    limited.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield limited
    finally:
        server.shutdown()
        server.server_close()


async def test_a_429_waits_its_retry_after_and_never_uses_up_the_attempts(
    queue: QueueBackend, clock: ManualClock
) -> None:
    with rate_limited("30", times=6) as receiver:
        finished_job(queue, receiver.url)
        dispatch = dispatcher(queue, clock, max_attempts=2)
        for _ in range(6):  # three times the attempts allowed: rate limits are not counted
            [limited] = await deliver_due(dispatch, queue)
            assert (limited.state, limited.attempts, limited.next_at) == (
                DeliveryState.PENDING,
                0,
                clock.now() + 30,
            )
            assert "HTTP 429" in (limited.error or "")
            clock.advance(29)
            assert await deliver_due(dispatch, queue) == [], "not before its Retry-After"
            clock.advance(1)
        [done] = await deliver_due(dispatch, queue)
    assert (done.state, done.attempts) == (DeliveryState.DELIVERED, 1)
    assert receiver.answered == [429] * 6 + [204]


@pytest.mark.parametrize(("header", "wait"), [("0", 0.25), ("soon", 1.0), ("-5", 1.0), ("99999", 3600.0)])
async def test_a_retry_after_that_is_odd_is_bounded_or_ignored(
    queue: QueueBackend, clock: ManualClock, header: str, wait: float
) -> None:
    """0 gets the shortest wait (no hot loop), garbage and dates back off as usual (counted), and a
    receiver cannot park a row for more than an hour."""
    with rate_limited(header, times=1) as receiver:
        job = finished_job(queue, receiver.url)
        [limited] = await deliver_due(dispatcher(queue, clock), queue)
    assert limited.next_at == clock.now() + wait
    assert limited.attempts == (1 if header in ("soon", "-5") else 0)
    assert dataclasses.replace(hook(queue, job), version=limited.version) == limited, "as saved"
