"""Every durable backend does what the memory backend does, step by random step.

A hypothesis state machine drives the memory queue (the reference) and SQLite (and Redis, when
`SWELL_TEST_REDIS_URL` is set) with the same operations on one manual clock, and after each step
checks that every job, listing (paged by cursor too), depth and counter agrees. Job ids are random,
so jobs are compared by their submission number. The operations include batches handed back split,
re-drives, bulk cancels, idempotency keys reused for the same and for another request, progress and
text reports, cancel requests and their answers, and the outbox (rows made with the submit, armed,
re-armed, tried, expired, shown progress); every job's event log and the global cursor
(`events_since`, all kinds) must agree too, sequence numbers included, and so must every outbox row.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from swell.core.clock import ManualClock
from swell.core.errors import QueueFull, SwellError
from swell.core.jobs import Delivery, DeliverySpec, Job, JobEvent, JobSpec, Priority
from swell.queue.base import Outcome, QueueBackend, Update
from swell.queue.memory import MemoryQueue
from swell.queue.sqlite import SQLiteQueue
from tests.queue.conftest import POLICY, START, drop_redis_keys

SERVICES = st.sampled_from(["a", "b"])
OWNERS = st.sampled_from(["w1", "w2"])
MODELS = st.sampled_from([None, "x", "y"])


class BackendsAgree(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(START)
        self.dir = tempfile.mkdtemp(prefix="swell-stateful-")
        self.queues: list[QueueBackend] = [
            MemoryQueue(clock=self.clock, policy=POLICY),
            SQLiteQueue(Path(self.dir) / "queue.db", clock=self.clock, policy=POLICY),
        ]
        self.redis_url = os.environ.get("SWELL_TEST_REDIS_URL")
        self.redis_prefix = f"swell-test-{uuid.uuid4().hex[:12]}"
        if self.redis_url:
            from swell.queue.redis import RedisQueue

            prefix = self.redis_prefix
            self.queues.append(RedisQueue(self.redis_url, clock=self.clock, policy=POLICY, prefix=prefix))
        self.numbers: list[dict[str, int]] = [{} for _ in self.queues]
        self.ids: list[list[str]] = [[] for _ in self.queues]

    def teardown(self) -> None:
        for queue in self.queues:
            queue.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.redis_url:
            drop_redis_keys(self.redis_url, self.redis_prefix)

    # -- running one operation on every backend ---------------------------------------------------

    def on_all(self, operation: Callable[[int, QueueBackend], Any]) -> Any:
        """Run `operation` on each backend; their outcomes, jobs numbered, must be equal."""
        outcomes = [self._outcome(i, operation) for i in range(len(self.queues))]
        for queue, outcome in zip(self.queues[1:], outcomes[1:], strict=True):
            assert outcome == outcomes[0], f"{queue!r} disagrees with the memory queue"
        return outcomes[0]

    def _outcome(self, backend: int, operation: Callable[[int, QueueBackend], Any]) -> Any:
        try:
            return self._number(backend, operation(backend, self.queues[backend]))
        except QueueFull as full:
            return ("QueueFull", full.retry_after)
        except SwellError as error:
            return type(error).__name__

    def _number(self, backend: int, value: Any) -> Any:
        if isinstance(value, JobEvent | Delivery):
            return dataclasses.replace(
                value, job_id=str(self.numbers[backend].get(value.job_id, value.job_id))
            )
        if isinstance(value, Job):
            numbers = self.numbers[backend]
            if value.id not in numbers:
                numbers[value.id] = len(self.ids[backend])
                self.ids[backend].append(value.id)
            return dataclasses.replace(value, id=str(numbers[value.id]))
        if isinstance(value, list | tuple):
            return type(value)(self._number(backend, item) for item in value)
        return value

    def job_id(self, backend: int, n: int) -> str:
        ids = self.ids[backend]
        return ids[n % len(ids)]

    # -- rules ------------------------------------------------------------------------------------

    @initialize(service=SERVICES, count=st.integers(2, 6), max_attempts=st.integers(1, 2))
    def some_jobs(self, service: str, count: int, max_attempts: int) -> None:
        """A queue that starts with work in it, so batches form from the first steps."""
        for n in range(count):
            spec = JobSpec(service=service, input={"v": n % 2}, max_attempts=max_attempts)
            self.on_all(lambda _, q, spec=spec: q.submit(spec))

    @rule(
        service=SERVICES,
        priority=st.sampled_from(list(Priority)),
        model=MODELS,
        key=st.sampled_from([None, "k1", "k2"]),
        limit=st.sampled_from([None, 2, 4]),
        max_attempts=st.integers(1, 3),
        callback=st.booleans(),
        value=st.integers(0, 1),
        chat=st.sampled_from([None, 30.0, 600.0]),
    )
    def submit(
        self,
        service: str,
        priority: Priority,
        model: str | None,
        key: str | None,
        limit: int | None,
        max_attempts: int,
        callback: bool,
        value: int,
        chat: float | None,
    ) -> None:
        spec = JobSpec(
            service=service,
            input={"v": value},
            priority=priority,
            model=model,
            idempotency_key=key,
            max_attempts=max_attempts,
            callback_url="https://example.com/hook" if callback else None,
            deliveries=() if chat is None else (DeliverySpec("chat", {"t": 1}, self.clock.now() + chat),),
        )
        self.on_all(lambda _, q: q.submit(spec, limit=limit))

    @rule(
        service=SERVICES,
        owner=OWNERS,
        max_jobs=st.integers(1, 3),
        seconds=st.sampled_from([2.0, 10.0]),
        model=MODELS,
    )
    def lease(self, service: str, owner: str, max_jobs: int, seconds: float, model: str | None) -> None:
        self.on_all(
            lambda _, q: q.lease(service, owner, max_jobs=max_jobs, lease_seconds=seconds, model=model)
        )

    @precondition(lambda self: bool(self.ids[0]))
    @rule(
        n=st.integers(0, 50),
        owner=OWNERS,
        action=st.sampled_from(
            [
                "complete",
                "fail",
                "fail_permanent",
                "release",
                "cancel",
                "renew",
                "retry",
                "handback",
                "stop",
                "report",
            ]
        ),
        batch_limit=st.integers(1, 3),
    )
    def act(self, n: int, owner: str, action: str, batch_limit: int) -> None:
        def handback(q: QueueBackend, job_id: str) -> list[Any]:
            settled = q.settle(owner, [Outcome.handback(job_id, "batch failed", batch_limit=batch_limit)])
            return [x if isinstance(x, Job) else type(x).__name__ for x in settled]

        operations: dict[str, Callable[[QueueBackend, str], Any]] = {
            "complete": lambda q, job_id: q.complete(job_id, owner, {"by": owner}),
            "fail": lambda q, job_id: q.fail(job_id, owner, "flaky"),
            "fail_permanent": lambda q, job_id: q.fail(job_id, owner, "bad", retryable=False),
            "release": lambda q, job_id: q.release(job_id, owner),
            "cancel": lambda q, job_id: q.cancel(job_id),
            "renew": lambda q, job_id: q.renew([job_id], owner, 10.0),
            "retry": lambda q, job_id: q.retry(job_id),
            "handback": handback,
            "stop": lambda q, job_id: [
                x if isinstance(x, Job) else type(x).__name__
                for x in q.settle(owner, [Outcome.cancelled(job_id)])
            ],
            "report": lambda q, job_id: q.report(
                owner, [Update(job_id, fraction=batch_limit / 4, delta=f"t{batch_limit}")]
            ),
        }
        self.on_all(lambda b, q: operations[action](q, self.job_id(b, n)))

    @rule(
        service=SERVICES,
        owner=OWNERS,
        max_jobs=st.integers(2, 4),
        limit=st.integers(1, 3),
        expire=st.booleans(),
    )
    def batch_fails(self, service: str, owner: str, max_jobs: int, limit: int, expire: bool) -> None:
        """A batch that fails as a whole: handed back by its worker, or left to its lease's expiry."""

        def handback(_: int, q: QueueBackend) -> list[Any]:
            batch = q.lease(service, owner, max_jobs=max_jobs, lease_seconds=2.0)
            if expire:
                return batch
            outcomes = [Outcome.handback(job.id, "batch timed out", batch_limit=limit) for job in batch]
            return [x if isinstance(x, Job) else type(x).__name__ for x in q.settle(owner, outcomes)]

        self.on_all(handback)
        if expire:
            self.clock.advance(2.0)
            self.on_all(lambda _, q: q.reap())

    @rule(service=st.sampled_from([None, "a", "b"]))
    def cancel_many(self, service: str | None) -> None:
        self.on_all(lambda _, q: q.cancel_many(service=service))

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 11.0, 61.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def reap(self) -> None:
        self.on_all(lambda _, q: q.reap())

    @rule(outcome=st.sampled_from(["delivered", "failed", "rate limited", "expired"]))
    def deliver(self, outcome: str) -> None:
        """A dispatcher's try of the first due row, recorded."""

        def deliver(backend: int, queue: QueueBackend) -> list[Delivery] | None:
            due = queue.due_deliveries(limit=1)
            if not due:
                return None
            row, _ = due[0]
            now = self.clock.now()
            tried = {
                "delivered": lambda: row.delivered(now),
                "failed": lambda: row.failed("503", now, max_attempts=2, policy=POLICY),
                "rate limited": lambda: row.failed(
                    "429", now, max_attempts=2, policy=POLICY, retry_after=2.0
                ),
                "expired": row.expired,
            }[outcome]()
            queue.save_delivery(tried)
            queue.save_delivery(tried)  # a stale second save changes nothing
            return queue.deliveries(row.job_id)

        self.on_all(deliver)

    @rule(expire=st.booleans(), seq=st.integers(1, 50))
    def open_row(self, expire: bool, seq: int) -> None:
        """A dispatcher expires the first open row, or shows it the job's progress."""

        def step(backend: int, queue: QueueBackend) -> list[Delivery] | None:
            rows = queue.open_deliveries(["chat", "webhook"], limit=1)
            if not rows:
                return None
            row, _ = rows[0]
            queue.save_delivery(row.expired() if expire else row.progressed(seq))
            return queue.deliveries(row.job_id)

        self.on_all(step)

    # -- what must hold after every step ----------------------------------------------------------

    @invariant()
    def everything_agrees(self) -> None:
        self.on_all(lambda _, q: q.jobs(limit=1000))
        self.on_all(lambda _, q: _pages(q, service="a", size=3))
        self.on_all(lambda _, q: q.events_since(0, kinds=("state", "progress", "delta", "cancel")))
        self.on_all(lambda b, q: [q.events(job_id) for job_id in self.ids[b]])
        self.on_all(lambda b, q: sorted(self.numbers[b][i] for i in q.cancel_requested(self.ids[b])))
        self.on_all(lambda _, q: q.due_deliveries(channels=["webhook", "chat"]))
        self.on_all(lambda _, q: q.open_deliveries(["webhook", "chat"], limit=1000))
        self.on_all(lambda b, q: [q.deliveries(job_id) for job_id in self.ids[b]])
        self.on_all(lambda _, q: (q.depth(), q.statistics()))


def _pages(queue: QueueBackend, service: str, size: int) -> list[list[Job]]:
    """Every page of the service's listing, each after the previous page's last job."""
    found: list[list[Job]] = []
    while page := queue.jobs(service=service, limit=size, before=found[-1][-1].id if found else None):
        found.append(page)
    return found


def test_backends_agree_with_the_memory_queue() -> None:
    run_state_machine_as_test(
        BackendsAgree, settings=settings(max_examples=60, stateful_step_count=40, deadline=None)
    )
