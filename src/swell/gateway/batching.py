"""Group commit for submits: the submits that arrive together share one queue transaction.

A burst of requests is parsed on the event loop while the previous batch is written in the storage
pool (`AsyncQueue`), so under load each commit carries many jobs and the loop never blocks on the
database; alone, a submit is a batch of one and costs one thread hop. Every submit still answers
only after its job is durable: the future resolves when the transaction that holds it has committed.

The line of submits waiting for a commit is bounded: past `max_pending`, a submit is refused at
once with `Unavailable` (503, Retry-After): the storage is not keeping up, and a quick refusal is
worth more to the client than a wait that ends in its own timeout.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from swell.core.errors import Unavailable
from swell.core.jobs import JobSpec
from swell.gateway.storage import AsyncQueue
from swell.queue.base import Submitted

MAX_BATCH = 256  # submits per transaction: bounds the time one commit holds the write lock
MAX_PENDING = 4096


@dataclass(slots=True)
class _Pending:
    spec: JobSpec
    limit: int | None
    answer: asyncio.Future[Submitted]


class GroupCommit:
    """`await submit(spec, limit)` is `queue.submit(spec, limit=limit)`, batched with its neighbours."""

    def __init__(
        self,
        storage: AsyncQueue,
        *,
        max_batch: int = MAX_BATCH,
        max_pending: int = MAX_PENDING,
        retry_after: float = 1.0,
    ) -> None:
        self.storage = storage
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.retry_after = retry_after
        self._pending: list[_Pending] = []
        self._in_flight = 0  # submits in the transaction being written
        self._writer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"GroupCommit(waiting={len(self._pending)}, writing={self._in_flight})"

    @property
    def waiting(self) -> int:
        """Submits not yet answered: queued for the next transaction or in the one being written."""
        return len(self._pending) + self._in_flight

    async def submit(self, spec: JobSpec, limit: int | None) -> Submitted:
        """The stored job and whether it was created; raises the `SwellError` that refused it
        (`QueueFull`, `Conflict`, `Unavailable`)."""
        if self.waiting >= self.max_pending:
            raise Unavailable(
                f"the gateway is overloaded ({self.waiting} submits waiting for storage); retry shortly",
                retry_after=self.retry_after,
            )
        answer: asyncio.Future[Submitted] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(spec, limit, answer))
        if self._writer is None:  # the writer starts on the next loop turn, after its neighbours arrive
            self._writer = asyncio.create_task(self._write(), name="submit-group-commit")
        return await answer

    async def _write(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                self._in_flight = len(batch)
                await self._commit(batch)
        finally:
            self._in_flight = 0
            self._writer = None

    async def _commit(self, batch: list[_Pending]) -> None:
        limits = {p.spec.service: p.limit for p in batch if p.limit is not None}
        try:
            outcomes = await self.storage.submit_many([p.spec for p in batch], limits)
        except Exception as exc:  # the whole transaction failed: every submit in it gets the error
            for pending in batch:
                _answer(pending, exc)
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            _answer(pending, outcome)


def _answer(pending: _Pending, outcome: Submitted | BaseException) -> None:
    if pending.answer.done():  # the client went away; its job is stored all the same
        return
    if isinstance(outcome, BaseException):
        pending.answer.set_exception(outcome)
    else:
        pending.answer.set_result(outcome)


__all__ = ["GroupCommit"]
