"""Every queue backend behind one fixture, so one contract suite runs against each of them.

Redis runs when `SWELL_TEST_REDIS_URL` names a server (CI sets it) and is skipped otherwise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from swell.core.clock import ManualClock
from swell.core.jobs import RetryPolicy
from swell.queue.base import QueueBackend

POLICY = RetryPolicy(backoff_base=1.0, backoff_cap=60.0, aging_seconds=60.0)
START = 1_700_000_000.0

OpenQueue = Callable[..., QueueBackend]


def drop_redis_keys(url: str, prefix: str) -> None:
    """Delete what a test wrote under `prefix`, so a shared server does not fill up."""
    import redis

    client = redis.Redis.from_url(url)
    for batch in _batches(client.scan_iter(match=f"{prefix}:*", count=1000), 500):
        client.delete(*batch)
    client.close()


def _batches(items: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _opener(
    name: str, tmp_path: Path, cleanups: list[Callable[[], None]]
) -> Callable[[ManualClock, RetryPolicy], QueueBackend]:
    if name == "memory":
        from swell.queue.memory import MemoryQueue

        shared: list[MemoryQueue] = []  # opening "again" finds the same jobs, as with a file

        def open_memory(clock: ManualClock, policy: RetryPolicy) -> QueueBackend:
            if not shared:
                shared.append(MemoryQueue(clock=clock, policy=policy))
            return shared[0]

        return open_memory
    if name == "sqlite":
        from swell.queue.sqlite import SQLiteQueue

        path = tmp_path / "queue.db"
        return lambda clock, policy: SQLiteQueue(path, clock=clock, policy=policy)
    url = os.environ.get("SWELL_TEST_REDIS_URL")
    if not url:
        pytest.skip("SWELL_TEST_REDIS_URL is not set")
    from swell.queue.redis import RedisQueue

    prefix = f"swell-test-{uuid.uuid4().hex[:12]}"
    cleanups.append(lambda: drop_redis_keys(url, prefix))
    return lambda clock, policy: RedisQueue(url, clock=clock, policy=policy, prefix=prefix)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def open_queue(backend_name: str, tmp_path: Path, clock: ManualClock) -> Iterator[OpenQueue]:
    """Opens the backend under test (again: the same file or keys) on the test's clock."""
    cleanups: list[Callable[[], None]] = []
    opener = _opener(backend_name, tmp_path, cleanups)
    opened: list[QueueBackend] = []

    def open_(policy: RetryPolicy = POLICY) -> QueueBackend:
        queue = opener(clock, policy)
        opened.append(queue)
        return queue

    yield open_
    for queue in opened:
        queue.close()
    for cleanup in cleanups:
        cleanup()


@pytest.fixture
def queue(open_queue: OpenQueue) -> QueueBackend:
    return open_queue()
