"""The outbox dispatcher with two channels at once: the webhook channel posting to a real receiver on
loopback, and a test channel that wants progress and whose target expires (as Discord's does), over a
real SQLite file. Also `create_app`'s dispatcher: the channels it is given, run by its lifespan under
a real uvicorn."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from swell.core.clock import ManualClock, SystemClock
from swell.core.config import Settings, parse_config
from swell.core.errors import ConfigError
from swell.core.jobs import Delivery, DeliverySpec, DeliveryState, Job, JobSpec, RetryPolicy
from swell.gateway.app import create_app
from swell.gateway.limits import GatewayLimits
from swell.gateway.outbox import Channel, DeliveryFailed, Dispatcher
from swell.gateway.webhooks import WebhookChannel, verify
from swell.queue.base import QueueBackend, Update, open_queue
from tests.gateway.helpers import API_KEY, SERVICES
from tests.gateway.receiver import Receiver, webhook_receiver
from tests.support import free_port, wait_for

pytestmark = pytest.mark.anyio

SECRET = "outbox-secret"
START = 1_700_000_000.0
LOOPBACK = frozenset({"127.0.0.1:*"})


class Chat:
    """A test channel: records every call, and checks that no two calls for one row overlap."""

    name = "chat"
    wants_progress = True

    def __init__(self, *, pause: float = 0.0, fail: Exception | None = None) -> None:
        self.pause, self.fail = pause, fail
        self.calls: list[tuple[str, str, Any]] = []  # (what, job id, what it saw)
        self.busy: set[str] = set()
        self.overlaps = 0

    async def deliver(self, delivery: Delivery, job: Job) -> None:
        await self._call("deliver", delivery, job.state.value)
        if self.fail is not None:
            raise self.fail

    async def progress(self, delivery: Delivery, job: Job) -> None:
        await self._call("progress", delivery, job.progress)

    async def expire(self, delivery: Delivery, job: Job) -> None:
        await self._call("expire", delivery, job.state.value)

    def what(self, kind: str) -> list[Any]:
        return [seen for what, _, seen in self.calls if what == kind]

    async def _call(self, what: str, delivery: Delivery, seen: Any) -> None:
        if delivery.job_id in self.busy:
            self.overlaps += 1
        self.busy.add(delivery.job_id)
        try:
            self.calls.append((what, delivery.job_id, seen))
            await asyncio.sleep(self.pause)
        finally:
            self.busy.discard(delivery.job_id)


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[QueueBackend]:
    queue = open_queue(f"sqlite:///{tmp_path}/swell.db")
    yield queue
    queue.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as receiver:
        yield receiver


def both(queue: QueueBackend, chat: Chat, **options: Any) -> Dispatcher:
    webhook = WebhookChannel(SECRET, allow_hosts=LOOPBACK, timeout=5.0)
    channels: dict[str, Channel] = {"webhook": webhook, "chat": chat}
    return Dispatcher(queue, channels, policy=RetryPolicy(backoff_base=0.05), **options)


def submit(queue: QueueBackend, receiver: Receiver, expires_in: float | None = None) -> Job:
    chat = DeliverySpec(
        "chat", {"token": "t"}, None if expires_in is None else SystemClock().now() + expires_in
    )
    job, _ = queue.submit(
        JobSpec(service="svc", input={"n": 1}, callback_url=f"{receiver.url}/hook", deliveries=(chat,))
    )
    return job


def was_shown(chat: Chat, fraction: float) -> bool:
    return fraction in chat.what("progress")


def states(queue: QueueBackend, job: Job) -> dict[str, DeliveryState]:
    return {d.channel: d.state for d in queue.deliveries(job.id)}


async def until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def running(dispatch: Dispatcher) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(dispatch.run(stop))


async def stopped(stop: asyncio.Event, task: asyncio.Task[None], dispatch: Dispatcher) -> None:
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    dispatch.close()


async def test_progress_then_both_channels_deliver_the_outcome(
    queue: QueueBackend, receiver: Receiver
) -> None:
    chat = Chat(pause=0.05)
    dispatch = both(queue, chat)
    job = submit(queue, receiver)
    stop, task = await running(dispatch)
    [leased] = queue.lease("svc", "w1")
    await until(lambda: dispatch.cursor is not None)  # it starts at the newest event: after the lease
    for fraction in (0.25, 0.5, 0.75):
        queue.report("w1", [Update(job.id, fraction=fraction)])
        await until(partial(was_shown, chat, fraction))
    queue.complete(leased.id, "w1", {"n": 2})
    await until(lambda: set(states(queue, job).values()) == {DeliveryState.DELIVERED})
    await stopped(stop, task, dispatch)

    assert chat.what("progress") == [0.25, 0.5, 0.75], "each shown once, with the job as it was then"
    assert chat.what("deliver") == ["succeeded"] and chat.what("expire") == []
    assert chat.overlaps == 0, "never two calls for one row at once"
    [got] = receiver.deliveries
    assert got.headers["X-Swell-Job-Id"] == job.id and verify(got.body, got.headers, SECRET)
    [chat_row] = [d for d in queue.deliveries(job.id) if d.channel == "chat"]
    shown = [e.seq for e in queue.events(job.id) if e.kind == "progress"]
    assert chat_row.progress_seq in shown[1:], "saved (the last one may lose to the final step's arming)"
    assert (dispatch.delivered, dispatch.failed, dispatch.expired) == (2, 0, 0)


async def test_progress_that_arrives_while_a_call_runs_is_shown_after_it(
    queue: QueueBackend, receiver: Receiver
) -> None:
    chat = Chat(pause=0.8)
    dispatch = both(queue, chat)
    job = submit(queue, receiver)
    stop, task = await running(dispatch)
    queue.lease("svc", "w1")
    await until(lambda: dispatch.cursor is not None)
    queue.report("w1", [Update(job.id, fraction=0.25)])
    await until(partial(was_shown, chat, 0.25))
    for fraction in (0.5, 0.75):  # while the first call still runs
        queue.report("w1", [Update(job.id, fraction=fraction)])
    await until(partial(was_shown, chat, 0.75))
    await stopped(stop, task, dispatch)
    assert chat.what("progress") == [0.25, 0.75], "the latest news, once the row is free"
    assert chat.overlaps == 0


async def test_a_target_about_to_expire_is_told_once_then_expired(
    queue: QueueBackend, receiver: Receiver
) -> None:
    chat = Chat()
    dispatch = both(queue, chat, expire_lead=60.0)
    job = submit(queue, receiver, expires_in=30.0)  # within the lead: expire at the first look
    lasting = submit(queue, receiver, expires_in=600.0)
    stop, task = await running(dispatch)
    await until(lambda: states(queue, job)["chat"] is DeliveryState.EXPIRED)
    await asyncio.sleep(0.6)  # another look at open rows: no second expire()
    for _ in (job, lasting):
        [leased] = queue.lease("svc", "w1")
        queue.complete(leased.id, "w1", {"n": 2})
    await until(lambda: states(queue, job)["webhook"] is DeliveryState.DELIVERED)
    await until(
        lambda: (
            states(queue, lasting) == {"webhook": DeliveryState.DELIVERED, "chat": DeliveryState.DELIVERED}
        )
    )
    await stopped(stop, task, dispatch)

    assert [(what, i) for what, i, _ in chat.calls] == [("expire", job.id), ("deliver", lasting.id)]
    assert chat.what("expire") == ["queued"], "told while the job still ran"
    assert states(queue, job) == {"webhook": DeliveryState.DELIVERED, "chat": DeliveryState.EXPIRED}
    assert dispatch.expired == 1


async def test_a_due_row_past_its_expiry_is_expired_without_a_try(queue: QueueBackend) -> None:
    clock = ManualClock(START)
    queue_clock = open_queue("memory://", clock=clock)
    job, _ = queue_clock.submit(
        JobSpec(service="svc", input={}, deliveries=(DeliverySpec("chat", {}, expires_at=START + 10),))
    )
    queue_clock.cancel(job.id)
    clock.advance(11)
    chat = Chat()
    [(row, final)] = queue_clock.due_deliveries()
    expired = await Dispatcher(queue_clock, {"chat": chat}, clock=clock).deliver(row, final)
    assert expired.state is DeliveryState.EXPIRED and chat.calls == []


@pytest.mark.parametrize(
    ("failure", "state", "attempts", "logged"),
    [
        (DeliveryFailed("the interaction is gone", permanent=True), DeliveryState.FAILED, 1, "gave up"),
        (DeliveryFailed("rate limited", retry_after=5.0), DeliveryState.PENDING, 0, None),
        (RuntimeError("a bug in the channel"), DeliveryState.PENDING, 1, "the chat channel failed"),
    ],
)
async def test_what_a_channel_raises_decides_the_row(
    queue: QueueBackend,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    failure: Exception,
    state: DeliveryState,
    attempts: int,
    logged: str | None,
) -> None:
    job = submit(queue, receiver)
    queue.cancel(job.id)
    dispatch = both(queue, Chat(fail=failure))
    [(row, final)] = [(d, j) for d, j in queue.due_deliveries() if d.channel == "chat"]
    with caplog.at_level(logging.WARNING, logger="swell.outbox"):
        tried = await dispatch.deliver(row, final)
    dispatch.close()
    assert (tried.state, tried.attempts) == (state, attempts)
    [stored] = [d for d in queue.deliveries(job.id) if d.channel == "chat"]
    assert (stored.state, stored.attempts, stored.error) == (state, attempts, tried.error)
    messages = [r.getMessage() for r in caplog.records]
    assert (logged is None and messages == []) or any(logged in m for m in messages if logged)


async def test_rows_of_a_channel_the_dispatcher_lacks_stay_due(
    queue: QueueBackend, receiver: Receiver
) -> None:
    job = submit(queue, receiver)
    queue.cancel(job.id)
    webhook = WebhookChannel(SECRET, allow_hosts=LOOPBACK)
    dispatch = Dispatcher(queue, {"webhook": webhook})
    stop, task = await running(dispatch)
    await until(lambda: states(queue, job)["webhook"] is DeliveryState.DELIVERED)
    await stopped(stop, task, dispatch)
    assert states(queue, job)["chat"] is DeliveryState.PENDING


def test_a_channel_registered_under_another_name_is_refused(queue: QueueBackend) -> None:
    with pytest.raises(ConfigError) as refused:
        Dispatcher(queue, {"discord": Chat()})
    assert refused.value.field == "channels"


def test_create_app_runs_one_dispatcher_with_the_channels_it_is_given(tmp_path: Path) -> None:
    """Under a real uvicorn the app's lifespan runs the dispatcher: a cancelled job's chat row is
    delivered with nothing else started."""
    queue = open_queue(f"sqlite:///{tmp_path}/swell.db")
    settings = Settings(data_dir=tmp_path, api_key=API_KEY, webhook_secret=SECRET)
    chat = Chat()
    quiet = GatewayLimits(max_loop_lag_seconds=60.0)  # a busy machine must not shed the DELETE below
    app = create_app(parse_config(SERVICES), settings, queue, channels={"chat": chat}, limits=quiet)
    assert sorted(app.state.dispatcher.channels) == ["chat", "webhook"]
    assert isinstance(app.state.dispatcher.channels["webhook"], WebhookChannel)
    job, _ = queue.submit(JobSpec(service="echo", input={}, deliveries=(DeliverySpec("chat", {"t": 1}),)))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200, 20, "uvicorn")
        headers = {"Authorization": f"Bearer {API_KEY}"}
        httpx.delete(f"{base}/v1/jobs/{job.id}", headers=headers, timeout=5)
        wait_for(lambda: chat.what("deliver") == ["cancelled"], 10, "the lifespan's dispatcher")
        shown = httpx.get(f"{base}/v1/jobs/{job.id}", headers=headers, timeout=5).json()
        wait_for(lambda: states(queue, job) == {"chat": DeliveryState.DELIVERED}, 10, "the row saved")
        assert "webhook" not in shown and [d["channel"] for d in shown["deliveries"]] == ["chat"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        queue.close()
