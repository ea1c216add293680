"""Group commit: submits that arrive together share one transaction, each still gets its own answer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from swell.core.errors import Conflict, QueueFull, SwellError, Unavailable
from swell.core.jobs import JobSpec
from swell.gateway.batching import GroupCommit
from swell.gateway.storage import AsyncQueue
from swell.queue.base import Submitted
from swell.queue.sqlite import SQLiteQueue


class CountingQueue(SQLiteQueue):
    """A real SQLite queue that records the size of every `submit_many` transaction."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []

    def submit_many(
        self, specs: Sequence[JobSpec], *, limits: Mapping[str, int] | None = None
    ) -> list[Submitted | SwellError]:
        self.batches.append(len(specs))
        return super().submit_many(specs, limits=limits)


def spec(n: int, key: str | None = None) -> JobSpec:
    return JobSpec(service="svc", input={"n": n}, idempotency_key=key)


def test_a_burst_shares_transactions_and_every_submit_gets_its_job(tmp_path: Path) -> None:
    queue = CountingQueue(tmp_path / "q.db")
    commits = GroupCommit(AsyncQueue(queue), max_batch=64)

    async def burst() -> list[Submitted]:
        return await asyncio.gather(*(commits.submit(spec(n), None) for n in range(200)))

    answers = asyncio.run(burst())
    assert [job.input for job, _ in answers] == [{"n": n} for n in range(200)]
    assert all(created for _, created in answers)
    assert sum(queue.batches) == 200 and len(queue.batches) <= 5, queue.batches
    assert max(queue.batches) <= 64, "a transaction never carries more than max_batch submits"
    assert {job.id for job in queue.jobs(limit=500)} == {job.id for job, _ in answers}, "every job durable"


def test_admission_and_idempotency_answer_each_submit_on_its_own(tmp_path: Path) -> None:
    queue = CountingQueue(tmp_path / "q.db")
    commits = GroupCommit(AsyncQueue(queue))

    async def burst() -> list[Submitted | BaseException]:
        submits = [commits.submit(spec(0, key="k"), 3), commits.submit(spec(0, key="k"), 3)]
        submits.append(commits.submit(spec(1, key="k"), 3))  # the same key, another input
        submits += [commits.submit(spec(n), 3) for n in range(2, 5)]
        return await asyncio.gather(*submits, return_exceptions=True)

    first, repeat, conflict, second, third, refused = asyncio.run(burst())
    assert queue.batches == [6], "one transaction"
    assert isinstance(first, tuple) and isinstance(repeat, tuple)
    assert repeat == (first[0], False)
    assert isinstance(conflict, Conflict) and conflict.field == "idempotency_key"
    assert isinstance(second, tuple) and isinstance(third, tuple)
    assert isinstance(refused, QueueFull), "the fourth active job is over the limit of 3"


def test_submits_past_the_bound_are_refused_at_once(tmp_path: Path) -> None:
    """While the storage holds a commit, the line of waiting submits is bounded: the next one is a
    503 with a retry time, answered before the storage comes back."""
    queue = CountingQueue(tmp_path / "q.db")
    release = threading.Event()
    original = queue.submit_many

    def slow_submit_many(specs: Sequence[JobSpec], *, limits: Mapping[str, int] | None = None) -> list[Any]:
        release.wait(30)
        return original(specs, limits=limits)

    queue.submit_many = slow_submit_many  # type: ignore[method-assign]
    commits = GroupCommit(AsyncQueue(queue), max_pending=3, retry_after=2)

    async def scenario() -> tuple[list[Any], BaseException | None]:
        waiting = [asyncio.ensure_future(commits.submit(spec(n), None)) for n in range(3)]
        await asyncio.sleep(0)
        try:
            await commits.submit(spec(9), None)
        except Unavailable as exc:
            refused: BaseException | None = exc
        else:
            refused = None
        assert not any(task.done() for task in waiting), "the first three still wait for storage"
        release.set()
        return await asyncio.gather(*waiting), refused

    stored, refused = asyncio.run(scenario())
    assert isinstance(refused, Unavailable) and refused.retry_after == 2
    assert [job.input for job, _ in stored] == [{"n": n} for n in range(3)]


def test_a_failed_transaction_fails_every_submit_in_it(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "q.db")
    queue.close()
    (tmp_path / "q.db").unlink()
    (tmp_path / "q.db").mkdir()  # the file is gone and cannot be reopened: every write fails
    commits = GroupCommit(AsyncQueue(queue))

    async def burst() -> list[Submitted | BaseException]:
        return await asyncio.gather(
            *(commits.submit(spec(n), None) for n in range(3)), return_exceptions=True
        )

    outcomes = asyncio.run(burst())
    assert all(isinstance(o, Exception) for o in outcomes)

    async def alone() -> Submitted:
        return await commits.submit(spec(9), None)

    with pytest.raises(Exception, match=r"unable to open|disk I/O"):
        asyncio.run(alone())  # and the writer is ready for the next burst rather than stuck
