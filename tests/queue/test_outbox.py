"""The outbox contract every queue backend passes: delivery rows made with the submit, armed by the
final transition in the same atomic step, re-armed by a re-drive, and the dispatcher's tries
(back-off, a target's retry_after, expiry, stale saves) recorded the same way by memory, SQLite on a
real file and Redis on a real server. Also: at least once across a dispatcher's restart, with a real
`Dispatcher` over a reopened queue, and the SQLite migration that moved webhook state into rows."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from swell.core.clock import ManualClock
from swell.core.errors import JobNotFound, ValidationError
from swell.core.jobs import (
    MIN_RETRY_AFTER,
    Delivery,
    DeliverySpec,
    DeliveryState,
    Job,
    JobSpec,
    JobState,
)
from swell.gateway.outbox import DeliveryFailed, Dispatcher
from swell.queue import sqlite as schema
from swell.queue.base import Outbox, QueueBackend
from swell.queue.sqlite import SQLiteQueue
from tests.queue.conftest import POLICY, START, OpenQueue

HOOK = "https://example.com/hook"
CHAT = DeliverySpec("chat", {"app": "a1", "token": "t"}, expires_at=START + 900)


def submit(queue: QueueBackend, **changes: object) -> Job:
    fields: dict[str, object] = {"service": "svc", "input": {"n": 1}, **changes}
    job, created = queue.submit(JobSpec(**fields))  # type: ignore[arg-type]
    assert created
    return job


def rows(queue: QueueBackend, job: Job) -> list[tuple[str, DeliveryState, int]]:
    return [(d.channel, d.state, d.attempts) for d in queue.deliveries(job.id)]


def due(queue: Outbox, **kwargs: object) -> list[tuple[str, str]]:
    return [(d.job_id, d.channel) for d, _ in queue.due_deliveries(**kwargs)]  # type: ignore[arg-type]


def finish(queue: QueueBackend, job: Job) -> Job:
    [leased] = queue.lease("svc", "w1")
    assert leased.id == job.id
    return queue.complete(job.id, "w1", {"ok": True})


def row(queue: QueueBackend, job: Job, channel: str = "webhook") -> Delivery:
    [found] = [d for d in queue.deliveries(job.id) if d.channel == channel]
    return found


# -- made with the submit --------------------------------------------------------------------------


def test_the_submit_makes_one_waiting_row_per_delivery(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(queue, callback_url=HOOK, deliveries=(CHAT,))
    hook, chat = queue.deliveries(job.id)
    assert hook == Delivery(job.id, "webhook", {"url": HOOK}, DeliveryState.WAITING, created_at=clock.now())
    assert (chat.channel, chat.target, chat.expires_at) == ("chat", {"app": "a1", "token": "t"}, START + 900)
    assert chat.state is DeliveryState.WAITING and chat.version == 0
    assert queue.deliveries(submit(queue).id) == [], "a job without deliveries has no rows"
    assert due(queue) == []
    with pytest.raises(JobNotFound):
        queue.deliveries("nope")


def test_one_delivery_per_channel() -> None:
    with pytest.raises(ValidationError) as refused:
        JobSpec(
            service="s", input={}, callback_url=HOOK, deliveries=(DeliverySpec("webhook", {"url": HOOK}),)
        )
    assert refused.value.field == "deliveries"


def test_an_idempotent_repeat_makes_no_rows(queue: QueueBackend) -> None:
    job = submit(queue, idempotency_key="k", callback_url=HOOK)
    again, created = queue.submit(
        JobSpec(service="svc", input={"n": 1}, idempotency_key="k", deliveries=(CHAT,))
    )
    assert (again.id, created) == (job.id, False)
    assert rows(queue, job) == [("webhook", DeliveryState.WAITING, 0)]


def test_open_rows_expiring_first_then_in_order_made(queue: QueueBackend) -> None:
    first = submit(queue, callback_url=HOOK)
    late = submit(queue, deliveries=(dataclasses.replace(CHAT, expires_at=START + 2000),))
    soon = submit(queue, callback_url=HOOK, deliveries=(CHAT,))
    listed = [(d.job_id, d.channel) for d, _ in queue.open_deliveries(["webhook", "chat"])]
    assert listed == [(soon.id, "chat"), (late.id, "chat"), (first.id, "webhook"), (soon.id, "webhook")]
    assert [(d.job_id, j.id) for d, j in queue.open_deliveries(["chat"], limit=1)] == [(soon.id, soon.id)]
    assert queue.open_deliveries([]) == []
    finish(queue, first)
    assert first.id not in {d.job_id for d, _ in queue.open_deliveries(["webhook", "chat"])}


# -- armed with the final transition ---------------------------------------------------------------


def expire_lease(queue: QueueBackend, clock: ManualClock, job: Job) -> Job:
    queue.lease("svc", "w1", lease_seconds=5)
    clock.advance(5)
    queue.reap()
    return queue.get(job.id)


ENDINGS: dict[str, Callable[[QueueBackend, ManualClock, Job], Job]] = {
    "succeeded": lambda q, c, j: q.complete(q.lease("svc", "w1")[0].id, "w1", {"ok": 1}),
    "failed": lambda q, c, j: q.fail(q.lease("svc", "w1")[0].id, "w1", "bad input", retryable=False),
    "dead": lambda q, c, j: q.fail(q.lease("svc", "w1")[0].id, "w1", "boom"),
    "cancelled": lambda q, c, j: q.cancel(j.id),
    "expired lease": expire_lease,
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_final_transition_arms_the_rows_in_its_step(
    queue: QueueBackend, clock: ManualClock, ending: str
) -> None:
    job = submit(queue, max_attempts=1, callback_url=HOOK, deliveries=(CHAT,))
    clock.advance(3)
    ended = ENDINGS[ending](queue, clock, job)
    assert ended.state.final
    armed = queue.due_deliveries()
    assert [(d.channel, d.state, d.next_at, d.version) for d, _ in armed] == [
        ("webhook", DeliveryState.PENDING, ended.finished_at, 1),
        ("chat", DeliveryState.PENDING, ended.finished_at, 1),
    ]
    assert all(j == queue.get(job.id) and j.state.final for _, j in armed), "each row with its final job"
    assert queue.open_deliveries(["webhook", "chat"]) == []


def test_transitions_that_are_not_final_leave_the_rows_waiting(
    queue: QueueBackend, clock: ManualClock
) -> None:
    job = submit(queue, max_attempts=3, callback_url=HOOK)
    queue.fail(queue.lease("svc", "w1")[0].id, "w1", "flaky")  # back to the queue
    clock.advance(POLICY.backoff(1))
    [leased] = queue.lease("svc", "w1")
    queue.release(leased.id, "w1")
    assert rows(queue, job) == [("webhook", DeliveryState.WAITING, 0)] and due(queue) == []


def test_sqlite_arms_in_the_transaction_of_the_transition(tmp_path: Path, clock: ManualClock) -> None:
    """A failure while arming rolls the transition back with it: the job is still leased."""
    queue = SQLiteQueue(tmp_path / "queue.db", clock=clock, policy=POLICY)
    job = submit(queue, callback_url=HOOK)
    queue.lease("svc", "w1")
    with sqlite3.connect(tmp_path / "queue.db") as db:
        db.execute("CREATE TRIGGER boom BEFORE UPDATE ON deliveries BEGIN SELECT RAISE(ABORT, 'no'); END")
    with pytest.raises(sqlite3.IntegrityError):
        queue.complete(job.id, "w1", {"ok": True})
    assert queue.get(job.id).state is JobState.LEASED
    assert rows(queue, job) == [("webhook", DeliveryState.WAITING, 0)]
    queue.close()


# -- the dispatcher's tries, recorded --------------------------------------------------------------


def test_back_off_then_give_up(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(queue, callback_url=HOOK)
    finish(queue, job)
    for attempt in (1, 2):
        [(pending, _)] = queue.due_deliveries()
        queue.save_delivery(pending.failed("HTTP 500", clock.now(), max_attempts=3, policy=POLICY))
        assert due(queue) == [], "not before its back-off"
        assert due(queue, now=clock.now() + POLICY.backoff(attempt)) == [(job.id, "webhook")]
        clock.advance(POLICY.backoff(attempt))
    [(pending, _)] = queue.due_deliveries()
    queue.save_delivery(pending.failed("HTTP 500", clock.now(), max_attempts=3, policy=POLICY))
    gave_up = row(queue, job)
    assert (gave_up.state, gave_up.attempts, gave_up.error, gave_up.next_at) == (
        DeliveryState.FAILED,
        3,
        "HTTP 500",
        None,
    )
    clock.advance(3600)
    assert due(queue) == []


def test_a_rate_limited_try_waits_as_told_and_is_not_counted(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(queue, callback_url=HOOK)
    finish(queue, job)
    for _ in range(5):  # more than max_attempts: a rate limit never uses up the follow-up
        [(pending, _)] = queue.due_deliveries()
        queue.save_delivery(
            pending.failed("HTTP 429", clock.now(), max_attempts=2, policy=POLICY, retry_after=7)
        )
        assert due(queue, now=clock.now() + 6.9) == []
        clock.advance(7)
    [(pending, _)] = queue.due_deliveries()
    assert (pending.state, pending.attempts, pending.error) == (DeliveryState.PENDING, 0, "HTTP 429")
    queue.save_delivery(pending.delivered(clock.now()))
    assert rows(queue, job) == [("webhook", DeliveryState.DELIVERED, 1)]
    zero = pending.failed("429", 0.0, max_attempts=2, policy=POLICY, retry_after=0)
    assert zero.next_at == MIN_RETRY_AFTER, "no hot loop on Retry-After: 0"


def test_an_expired_row_is_not_armed_later(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(queue, deliveries=(CHAT,))
    [(open_row, _)] = queue.open_deliveries(["chat"])
    queue.save_delivery(open_row.expired())
    assert queue.open_deliveries(["chat"]) == []
    finish(queue, job)
    assert due(queue) == [] and rows(queue, job) == [("chat", DeliveryState.EXPIRED, 0)]
    assert row(queue, job, "chat").error is not None


def test_progress_seq_is_kept_on_a_waiting_row(queue: QueueBackend) -> None:
    job = submit(queue, deliveries=(CHAT,))
    [(open_row, _)] = queue.open_deliveries(["chat"])
    queue.save_delivery(open_row.progressed(12))
    [(again, _)] = queue.open_deliveries(["chat"])
    assert (again.progress_seq, again.version, again.state) == (12, 1, DeliveryState.WAITING)
    queue.save_delivery(again.progressed(5))
    assert row(queue, job, "chat").progress_seq == 12, "never backwards"


def test_due_rows_by_time_then_order_made_limited_and_by_channel(
    queue: QueueBackend, clock: ManualClock
) -> None:
    jobs = []
    for _ in range(3):
        jobs.append(submit(queue, callback_url=HOOK, deliveries=(CHAT,)))
        queue.cancel(jobs[-1].id)
        clock.advance(1)
    assert due(queue, limit=3) == [(jobs[0].id, "webhook"), (jobs[0].id, "chat"), (jobs[1].id, "webhook")]
    assert due(queue, channels=["chat"], limit=2) == [(jobs[0].id, "chat"), (jobs[1].id, "chat")]
    assert due(queue, channels=[]) == []
    assert due(queue, now=START + 0.5) == [(jobs[0].id, "webhook"), (jobs[0].id, "chat")]


def test_a_save_over_a_changed_row_is_ignored(queue: QueueBackend, clock: ManualClock) -> None:
    """A try that ends after the job was re-driven (or another dispatcher saved) loses the race."""
    job = submit(queue, max_attempts=1, callback_url=HOOK)
    queue.fail(queue.lease("svc", "w1")[0].id, "w1", "boom")
    [(in_flight, _)] = queue.due_deliveries()
    queue.retry(job.id)  # re-armed while the try is in flight
    queue.save_delivery(in_flight.delivered(clock.now()))
    assert rows(queue, job) == [("webhook", DeliveryState.WAITING, 0)], "the new round is not lost"
    queue.fail(queue.lease("svc", "w1")[0].id, "w1", "boom again")
    [(again, _)] = queue.due_deliveries()
    queue.save_delivery(again.delivered(clock.now()))
    queue.save_delivery(again.failed("late", clock.now(), max_attempts=3, policy=POLICY))
    assert rows(queue, job) == [("webhook", DeliveryState.DELIVERED, 1)]
    with pytest.raises(JobNotFound):
        queue.save_delivery(dataclasses.replace(again, channel="nope"))


def test_redrive_re_arms_every_row(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(queue, max_attempts=1, callback_url=HOOK, deliveries=(CHAT,))
    queue.fail(queue.lease("svc", "w1")[0].id, "w1", "boom")
    hook, chat = (d for d, _ in queue.due_deliveries())
    queue.save_delivery(hook.delivered(clock.now()))
    queue.save_delivery(chat.failed("gone", clock.now(), max_attempts=1, policy=POLICY))
    clock.advance(10)
    queue.retry(job.id)
    again = queue.deliveries(job.id)
    assert [(d.state, d.attempts, d.next_at, d.error, d.progress_seq) for d in again] == [
        (DeliveryState.WAITING, 0, None, None, 0)
    ] * 2
    assert due(queue) == [] and len(queue.open_deliveries(["webhook", "chat"])) == 2
    finish(queue, job)
    assert due(queue) == [(job.id, "webhook"), (job.id, "chat")]
    assert {d.next_at for d in queue.deliveries(job.id)} == {clock.now()}


# -- at least once across a restart ----------------------------------------------------------------


class Recording:
    """A test channel that records what it is given; `hang` makes its tries never end."""

    wants_progress = False

    def __init__(self, name: str = "chat", *, hang: bool = False, fail: DeliveryFailed | None = None) -> None:
        self.name, self.hang, self.fail = name, hang, fail
        self.started: list[str] = []
        self.delivered: list[tuple[str, str]] = []

    async def deliver(self, delivery: Delivery, job: Job) -> None:
        self.started.append(job.id)
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail
        self.delivered.append((job.id, job.state.value))

    async def progress(self, delivery: Delivery, job: Job) -> None:
        pass

    async def expire(self, delivery: Delivery, job: Job) -> None:
        pass


async def run_until(dispatch: Dispatcher, done: Callable[[], bool], seconds: float = 10.0) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(dispatch.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not done() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(running, timeout=5)
    dispatch.close()


def test_a_try_cut_short_is_made_again_after_a_restart(
    open_queue: OpenQueue, backend_name: str, clock: ManualClock
) -> None:
    queue = open_queue()
    job = submit(queue, deliveries=(dataclasses.replace(CHAT, expires_at=None),))
    queue.cancel(job.id)
    stuck = Recording(hang=True)
    asyncio.run(run_until(Dispatcher(queue, {"chat": stuck}, clock=clock), lambda: bool(stuck.started)))
    assert stuck.started == [job.id] and rows(queue, job) == [("chat", DeliveryState.PENDING, 0)]
    if backend_name != "memory":
        queue.close()
        queue = open_queue()
    fresh = Recording()

    def saved() -> bool:
        return row(queue, job, "chat").state is DeliveryState.DELIVERED

    asyncio.run(run_until(Dispatcher(queue, {"chat": fresh}, clock=clock), saved))
    assert fresh.delivered == [(job.id, "cancelled")]
    assert rows(queue, job) == [("chat", DeliveryState.DELIVERED, 1)]


# -- the SQLite migration --------------------------------------------------------------------------


def test_sqlite_version_3_webhook_state_moves_into_rows(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "queue.db"
    with sqlite3.connect(path) as db:
        for migration in schema.MIGRATIONS[:3]:
            for statement in schema._statements(migration.script):
                db.execute(statement)
        db.execute("PRAGMA user_version = 3")
        columns = (
            "id, service, state, priority, rank, input, created_at, available_at, max_attempts, timeout, "
            "attempts, callback_url, finished_at, webhook_state, webhook_attempts, webhook_next_at, "
            "webhook_error"
        )
        db.executemany(
            f"INSERT INTO jobs ({columns}) "
            "VALUES (?, 'svc', ?, 'normal', 0, '{}', 1, 1, 3, 60, 1, ?, ?, ?, ?, ?, ?)",
            [
                ("due", "succeeded", HOOK, 5.0, "pending", 2, START, "HTTP 500"),
                ("sent", "succeeded", HOOK + "/2", 5.0, "delivered", 1, None, None),
                ("running", "queued", HOOK, None, "waiting", 0, None, None),
                ("none", "succeeded", None, 5.0, "none", 0, None, None),
            ],
        )
    db.close()
    queue = SQLiteQueue(path, clock=clock, policy=POLICY)
    assert [(d.job_id, d.target, d.attempts, d.error) for d, _ in queue.due_deliveries()] == [
        ("due", {"url": HOOK}, 2, "HTTP 500")
    ]
    assert [(d.state, d.attempts) for d in queue.deliveries("sent")] == [(DeliveryState.DELIVERED, 1)]
    assert [d.job_id for d, _ in queue.open_deliveries(["webhook"])] == ["running"]
    assert queue.deliveries("none") == []
    with sqlite3.connect(path) as db:
        names = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    db.close()
    assert not {n for n in names if n.startswith("webhook")}, "the webhook columns left jobs"
    assert queue.get("due").callback_url == HOOK
    queue.close()
