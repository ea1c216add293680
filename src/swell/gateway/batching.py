"""Group commit for submits: the submits that arrive together share one queue transaction.

A burst of requests is parsed on the event loop while the previous batch is written in a thread, so
under load each commit carries many jobs and the loop never blocks on the database; alone, a submit
is a batch of one and costs one thread hop. Every submit still answers only after its job is
durable: the future resolves when the transaction that holds it has committed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from swell.core.errors import QueueFull
from swell.core.jobs import JobSpec
from swell.queue.base import QueueBackend, Submitted

MAX_BATCH = 256  # submits per transaction: bounds the time one commit holds the write lock


@dataclass(slots=True)
class _Pending:
    spec: JobSpec
    limit: int | None
    answer: asyncio.Future[Submitted]


class GroupCommit:
    """`await submit(spec, limit)` is `queue.submit(spec, limit=limit)`, batched with its neighbours."""

    def __init__(self, queue: QueueBackend, *, max_batch: int = MAX_BATCH) -> None:
        self.queue = queue
        self.max_batch = max_batch
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, spec: JobSpec, limit: int | None) -> Submitted:
        """The stored job and whether it was created; raises `QueueFull` when admission refuses."""
        answer: asyncio.Future[Submitted] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(spec, limit, answer))
        if self._writer is None:  # the writer starts on the next loop turn, after its neighbours arrive
            self._writer = asyncio.create_task(self._write(), name="submit-group-commit")
        return await answer

    async def _write(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                await self._commit(batch)
        finally:
            self._writer = None

    async def _commit(self, batch: list[_Pending]) -> None:
        limits = {p.spec.service: p.limit for p in batch if p.limit is not None}
        try:
            outcomes = await asyncio.to_thread(self.queue.submit_many, [p.spec for p in batch], limits=limits)
        except Exception as exc:  # the whole transaction failed: every submit in it gets the error
            for pending in batch:
                if not pending.answer.done():
                    pending.answer.set_exception(exc)
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.answer.done():  # the client went away; its job is stored all the same
                continue
            if isinstance(outcome, QueueFull):
                pending.answer.set_exception(outcome)
            else:
                pending.answer.set_result(outcome)


__all__ = ["GroupCommit"]
