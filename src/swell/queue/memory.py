"""The in-memory queue: every job in one dict behind one lock. For tests and the simulator.

Queued jobs also sit in heaps ordered by rank, one per service and one per (service, model), so a
lease costs O(log n) however long the queue. Heap entries are never removed in place: each carries
the token of the job's latest enqueue, and an entry whose token is stale is dropped when met.
Ties in rank go to the job available first, then to the one submitted first: the order of the
SQLite backend's index, so that every backend leases in the same order.

Events: one list per job and one log of every event in `seq` order, appended under the same lock
as the change they record (`_store` appends the state event of every transition). Final jobs wait
in a heap by finish time for their progress and delta events to be trimmed.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import threading
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from swell.core.clock import Clock, SystemClock
from swell.core.errors import Conflict, JobNotFound, LeaseLost, QueueFull, SwellError
from swell.core.jobs import (
    ACTIVITY_KINDS,
    Delivery,
    DeliveryState,
    Job,
    JobEvent,
    JobSpec,
    JobState,
    RetryPolicy,
    delivery_step,
)
from swell.queue._common import (
    ACTIVE_STATES,
    ADMISSION_WINDOW,
    Counters,
    OneAtATime,
    affine_candidates,
    apply_outcome,
    cancel_or_request,
    check_kinds,
    delivery_rows,
    fit_batch,
    full_message,
    holds,
    idempotency_conflict,
    interactive_waiting,
    lease_expired,
    missing_delivery,
    reported,
    require_owner,
    retry_after,
    saved,
    starve_limit,
    stepped,
    transition_events,
    uncounted,
    unknown_cursor,
    wants_stop,
)
from swell.queue.base import EVENT_RETENTION, TRIM_EVERY, Outcome, QueueStats, Submitted, Update

_Entry = tuple[float, float, int, int, str]  # (rank, available_at, submission number, token, job id)


class _ReadyIndex:
    """Queued jobs by rank, per service and per (service, model), with lazy deletion."""

    def __init__(self) -> None:
        self._by_service: dict[str, list[_Entry]] = defaultdict(list)
        self._by_model: dict[tuple[str, str | None], list[_Entry]] = defaultdict(list)
        self._tokens: dict[str, int] = {}
        self._next_token = itertools.count()

    def add(self, job: Job, rank: float, number: int) -> None:
        token = next(self._next_token)
        self._tokens[job.id] = token
        entry = (rank, job.available_at, number, token, job.id)
        self._push(self._by_service[job.service], entry)
        self._push(self._by_model[(job.service, job.model)], entry)  # None too: affine leases

    def discard(self, job_id: str) -> None:
        self._tokens.pop(job_id, None)

    def take(self, service: str, model: str | None, now: float, n: int) -> list[str]:
        """Up to `n` job ids available at `now`, jobs for `model` first, each by rank."""
        taken: list[str] = []
        if model is not None and (service, model) in self._by_model:
            taken = self._take(self._by_model[(service, model)], now, n)
        if len(taken) < n and service in self._by_service:
            taken += self._take(self._by_service[service], now, n - len(taken))
        return taken

    def peek(
        self,
        service: str,
        model: str | _Any | None,
        now: float,
        n: int,
        *,
        before: float | None = None,
        slack: float = 0.0,
    ) -> list[str]:
        """Up to `n` ids available at `now` by rank, left queued: of `model` (ANY: any), and with
        `before`, only those available at or before it (the scan stops past rank `before + slack`)."""
        if isinstance(model, _Any):
            heap = self._by_service.get(service)
        else:
            heap = self._by_model.get((service, model))
        if not heap:
            return []
        stop = None if before is None else before + slack
        return self._peek(heap, now, n, before, stop)

    def _peek(
        self, heap: list[_Entry], now: float, n: int, before: float | None, stop: float | None
    ) -> list[str]:
        found: list[str] = []
        popped: list[_Entry] = []
        while heap and len(found) < n and (stop is None or heap[0][0] <= stop):
            entry = heapq.heappop(heap)
            _, available_at, _, token, job_id = entry
            if self._tokens.get(job_id) != token:
                continue  # stale: dropped for good
            popped.append(entry)
            if available_at <= now and (before is None or available_at <= before):
                found.append(job_id)
        for entry in popped:
            heapq.heappush(heap, entry)
        return found

    def _take(self, heap: list[_Entry], now: float, n: int) -> list[str]:
        taken: list[str] = []
        later: list[_Entry] = []
        while heap and len(taken) < n:
            entry = heapq.heappop(heap)
            _, available_at, _, token, job_id = entry
            if self._tokens.get(job_id) != token:
                continue
            if available_at > now:
                later.append(entry)
                continue
            del self._tokens[job_id]
            taken.append(job_id)
        for entry in later:
            heapq.heappush(heap, entry)
        return taken

    def _push(self, heap: list[_Entry], entry: _Entry) -> None:
        heapq.heappush(heap, entry)
        if len(heap) > 64 and len(heap) > 2 * len(self._tokens):
            heap[:] = [e for e in heap if self._tokens.get(e[4]) == e[3]]
            heapq.heapify(heap)


class _Any:
    """The `model` of `_ReadyIndex.peek` that matches every job."""


ANY = _Any()


class _MemoryView:
    """`ReadyView` over a MemoryQueue's ready index, called under its lock."""

    def __init__(self, queue: MemoryQueue, service: str, now: float) -> None:
        self.queue, self.service, self.now = queue, service, now

    def starved(self, before: float, n: int) -> list[Job]:
        slack = self.queue._policy.aging_seconds  # a starved job's rank is at most before + slack
        return self._jobs(self.queue._ready.peek(self.service, ANY, self.now, n, before=before, slack=slack))

    def of_model(self, model: str | None, n: int) -> list[Job]:
        return self._jobs(self.queue._ready.peek(self.service, model, self.now, n))

    def first(self) -> Job | None:
        found = self._jobs(self.queue._ready.peek(self.service, ANY, self.now, 1))
        return found[0] if found else None

    def _jobs(self, ids: list[str]) -> list[Job]:
        return [self.queue._jobs[i] for i in ids]


class MemoryQueue(OneAtATime):
    """A `QueueBackend` held in this process; safe across its threads, lost when it exits."""

    def __init__(
        self,
        *,
        clock: Clock = SystemClock(),
        policy: RetryPolicy = RetryPolicy(),
        event_retention: float = EVENT_RETENTION,
    ) -> None:
        self._clock = clock
        self._policy = policy
        self.event_retention = event_retention
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._numbers: dict[str, int] = {}  # job id -> submission number
        self._ids: list[str] = []  # submission number -> job id
        self._keys: dict[tuple[str, str], str] = {}
        self._ready = _ReadyIndex()
        self._leased: dict[str, set[str]] = defaultdict(set)
        self._depth: Counter[tuple[str, JobState]] = Counter()
        self._finished: list[tuple[float, int]] = []  # (finished_at, submission number), sorted
        self._deliveries: dict[str, dict[str, Delivery]] = {}  # job id -> channel -> its row
        self._row_numbers: dict[tuple[str, str], int] = {}  # (job id, channel) -> creation order
        self._due: set[tuple[str, str]] = set()  # the rows that are pending
        self._open: set[tuple[str, str]] = set()  # the rows that are waiting
        self._counts = Counters()
        self._events: dict[str, list[JobEvent]] = defaultdict(list)  # job id -> its events
        self._log: list[JobEvent] = []  # every event, by seq
        self._activity: Counter[str] = Counter()  # job id -> progress and delta events kept
        self._untrimmed: list[tuple[float, str]] = []  # heap of (finished_at, id) of final jobs
        self._trimmed_at = clock.now()
        self._last_seq = 0

    # -- the protocol -----------------------------------------------------------------------------

    def submit_many(
        self, specs: Sequence[JobSpec], *, limits: Mapping[str, int] | None = None
    ) -> list[Submitted | SwellError]:
        limits = limits or {}
        with self._lock:
            now = self._clock.now()
            outcomes: list[Submitted | SwellError] = []
            for spec in specs:
                try:
                    outcomes.append(self._submit(spec, limits.get(spec.service), now))
                except (QueueFull, Conflict) as exc:
                    outcomes.append(exc)
            return outcomes

    def get(self, job_id: str) -> Job:
        with self._lock:
            return self._get(job_id)

    def get_many(self, job_ids: Sequence[str]) -> list[Job]:
        with self._lock:
            return [self._jobs[i] for i in job_ids if i in self._jobs]

    def lease(
        self,
        service: str,
        owner: str,
        *,
        max_jobs: int = 1,
        lease_seconds: float = 30.0,
        model: str | None = None,
        models: Sequence[str] = (),
        starve_after: float | None = None,
    ) -> list[Job]:
        with self._lock:
            now = self._clock.now()
            self._reap([service], now)
            if models or starve_after is not None:
                held = [*models, *([model] if model is not None else [])]
                chosen = self._affine(service, held, now, max_jobs, starve_limit(now, starve_after))
            else:
                chosen = self._ranked(service, model, now, max_jobs)
            batch = len(chosen)
            leased = [self._store(job.lease(owner, now, lease_seconds, batch=batch)) for job in chosen]
            self._counts.leased += len(leased)
            return leased

    def _ranked(self, service: str, model: str | None, now: float, max_jobs: int) -> list[Job]:
        """A plain lease's jobs: by rank, `model`'s first; taken off the ready index."""
        candidates = [self._jobs[i] for i in self._ready.take(service, model, now, max_jobs)]
        chosen = fit_batch(candidates, max_jobs)
        picked = {job.id for job in chosen}
        for job in candidates:
            if job.id not in picked:  # did not fit this batch: back in line, rank unchanged
                self._ready.add(job, job.rank(self._policy), self._numbers[job.id])
        return chosen

    def _affine(
        self, service: str, models: Sequence[str], now: float, max_jobs: int, before: float | None
    ) -> list[Job]:
        """A model-affine lease's jobs (`affine_candidates`), taken off the ready index."""
        view = _MemoryView(self, service, now)
        chosen = fit_batch(affine_candidates(view, models, max_jobs, before, self._policy), max_jobs)
        for job in chosen:
            self._ready.discard(job.id)
        return chosen

    def interactive_waiting(self, service: str, models: Sequence[str | None] = ()) -> bool:
        with self._lock:
            return interactive_waiting(_MemoryView(self, service, self._clock.now()), models)

    def renew(self, job_ids: Sequence[str], owner: str, lease_seconds: float) -> None:
        """Renews every lease `owner` still holds; then `LeaseLost` naming any it does not."""
        with self._lock:
            now = self._clock.now()
            lost = []
            for job_id in job_ids:
                job = self._jobs.get(job_id)
                if job is None or job.state is not JobState.LEASED or job.lease_owner != owner:
                    lost.append(job_id)
                else:
                    self._store(job.renew(owner, now, lease_seconds))
            if lost:
                raise LeaseLost(f"{owner} no longer holds the lease on {', '.join(lost)}")

    def settle(self, owner: str, outcomes: Sequence[Outcome]) -> list[Job | SwellError]:
        with self._lock:
            now = self._clock.now()
            settled: list[Job | SwellError] = []
            for outcome in outcomes:
                try:
                    job = self._get(outcome.job_id)
                    settled.append(self._finish(job, apply_outcome(job, owner, outcome, now, self._policy)))
                except (LeaseLost, JobNotFound) as exc:
                    settled.append(exc)
            if now - self._trimmed_at >= TRIM_EVERY:
                self._trim(now)
            return settled

    def release(self, job_id: str, owner: str) -> Job:
        with self._lock:
            job = self._owned(job_id, owner)
            return self._store(job.release(self._clock.now()))

    def cancel(self, job_id: str) -> Job:
        with self._lock:
            return self._store(cancel_or_request(self._get(job_id), self._clock.now()))

    def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        with self._lock:
            return {i for i in job_ids if i in self._jobs and wants_stop(self._jobs[i])}

    def report(self, owner: str, updates: Sequence[Update]) -> None:
        with self._lock:
            for update in updates:
                job = self._jobs.get(update.job_id)
                if job is None or not holds(job, owner):
                    continue
                new, events = reported(job, update, self._activity[job.id])
                self._store(new)
                for kind, data in events:
                    self._append(job.id, kind, data)

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        with self._lock:
            self._get(job_id)
            events = self._events.get(job_id, [])
            start = bisect.bisect_right(events, after, key=lambda e: e.seq)
            return events[start : start + limit]

    def events_since(
        self, after_seq: int, kinds: Sequence[str] = ("state",), limit: int = 1000
    ) -> list[JobEvent]:
        wanted = check_kinds(kinds)
        with self._lock:
            start = bisect.bisect_right(self._log, after_seq, key=lambda e: e.seq)
            found: list[JobEvent] = []
            for event in itertools.islice(self._log, start, None):
                if len(found) >= limit:
                    break
                if event.kind in wanted:
                    found.append(event)
            return found

    def cancel_many(self, *, service: str | None = None) -> int:
        with self._lock:
            now = self._clock.now()
            queued = [
                job
                for job in self._jobs.values()
                if job.state is JobState.QUEUED and (service is None or job.service == service)
            ]
            for job in queued:
                self._store(job.cancel(now))
            return len(queued)

    def retry(self, job_id: str) -> Job:
        with self._lock:
            job = self._store(self._get(job_id).redrive(self._clock.now()))
            self._counts.redriven += 1
            return job

    def event_cursor(self) -> int:
        with self._lock:
            return self._last_seq

    def reap(self) -> int:
        with self._lock:
            now = self._clock.now()
            reaped = self._reap(list(self._leased), now)
            self._trim(now)
            return reaped

    def jobs(
        self,
        *,
        service: str | None = None,
        state: JobState | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Job]:
        with self._lock:
            start = len(self._ids) if before is None else self._cursor(before)
            found: list[Job] = []
            for number in range(start - 1, -1, -1):
                if len(found) >= limit:
                    break
                job = self._jobs[self._ids[number]]
                if (service is None or job.service == service) and (state is None or job.state is state):
                    found.append(job)
            return found

    def depth(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return self._depth_view()

    def due_deliveries(
        self, now: float | None = None, limit: int = 100, channels: Sequence[str] | None = None
    ) -> list[tuple[Delivery, Job]]:
        with self._lock:
            now = self._clock.now() if now is None else now
            rows = [self._row(key) for key in self._due if channels is None or key[1] in channels]
            due = [row for row in rows if row.next_at is not None and row.next_at <= now]
            due.sort(key=lambda row: (row.next_at or 0.0, self._row_numbers[row.key]))
            return [(row, self._jobs[row.job_id]) for row in due[:limit]]

    def open_deliveries(self, channels: Sequence[str], limit: int = 100) -> list[tuple[Delivery, Job]]:
        with self._lock:
            rows = [self._row(key) for key in self._open if key[1] in channels]
            rows.sort(
                key=lambda row: (row.expires_at is None, row.expires_at or 0.0, self._row_numbers[row.key])
            )
            return [(row, self._jobs[row.job_id]) for row in rows[:limit]]

    def save_delivery(self, delivery: Delivery) -> None:
        with self._lock:
            stored = self._deliveries.get(delivery.job_id, {}).get(delivery.channel)
            if stored is None:
                raise missing_delivery(delivery)
            new = saved(stored, delivery)
            if new is not None:
                self._put_row(new)

    def deliveries(self, job_id: str) -> list[Delivery]:
        with self._lock:
            self._get(job_id)
            return list(self._deliveries.get(job_id, {}).values())

    def probe(self) -> None:
        """Memory always takes a write."""

    def statistics(self) -> QueueStats:
        with self._lock:
            return self._counts.snapshot(self._depth_view())

    def close(self) -> None:
        """Nothing to release; the jobs stay readable until the queue is dropped."""

    def __repr__(self) -> str:
        return f"MemoryQueue(jobs={len(self._jobs)}, clock={self._clock!r})"

    # -- helpers (the lock is held) ---------------------------------------------------------------

    def _get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(f"no job {job_id!r}", field="id") from None

    def _cursor(self, job_id: str) -> int:
        """The submission number of the job a page ended with."""
        if job_id not in self._numbers:
            raise unknown_cursor(job_id)
        return self._numbers[job_id]

    def _owned(self, job_id: str, owner: str) -> Job:
        job = self._get(job_id)
        require_owner(job, owner)
        return job

    def _submit(self, spec: JobSpec, limit: int | None, now: float) -> Submitted:
        if spec.idempotency_key is not None:
            existing = self._keys.get((spec.service, spec.idempotency_key))
            if existing is not None:
                if not self._jobs[existing].same_request(spec):
                    raise idempotency_conflict(self._jobs[existing], spec)
                self._counts.deduplicated += 1
                return self._jobs[existing], False
        if limit is not None:
            self._admit(spec.service, limit, now)
        job = self._store(Job.create(spec, now))
        for row in delivery_rows(job, spec):
            self._put_row(row)
        if spec.idempotency_key is not None:
            self._keys[(spec.service, spec.idempotency_key)] = job.id
        self._counts.submitted += 1
        return job, True

    def _admit(self, service: str, limit: int, now: float) -> None:
        active = sum(self._depth[(service, state)] for state in ACTIVE_STATES)
        if active < limit:
            return
        self._counts.rejected += 1
        start = bisect.bisect_left(self._finished, (now - ADMISSION_WINDOW, -1))
        recent = sum(1 for _, n in self._finished[start:] if self._jobs[self._ids[n]].service == service)
        raise QueueFull(
            full_message(service, active, limit), retry_after=retry_after(active - limit + 1, recent)
        )

    def _reap(self, services: list[str], now: float) -> int:
        expired = [
            self._jobs[i]
            for s in services
            for i in self._leased.get(s, ())
            if lease_expired(self._jobs[i], now)
        ]
        expired.sort(key=lambda j: (j.lease_expires_at or 0.0, self._numbers[j.id]))  # as every backend
        for job in expired:
            self._finish(job, job.expire(now, self._policy))
        self._counts.expired += len(expired)
        return len(expired)

    def _finish(self, before: Job, job: Job) -> Job:
        """Store the job after a delivery ended, counting it when it reached a final state or went
        back uncounted."""
        self._counts.count_final(job)
        self._counts.split += uncounted(before, job)
        return self._store(job)

    def _store(self, job: Job) -> Job:
        """Put `job` in place of its previous value and keep every index in step."""
        old = self._jobs.get(job.id)
        self._jobs[job.id] = job
        if old is None:
            self._numbers[job.id] = len(self._ids)
            self._ids.append(job.id)
        number = self._numbers[job.id]
        if old is None or old.state is not job.state:
            if old is not None:
                self._depth[(old.service, old.state)] -= 1
            self._depth[(job.service, job.state)] += 1
        if job.state is JobState.QUEUED:
            if old is None or old.state is not JobState.QUEUED or old.available_at != job.available_at:
                self._ready.add(job, job.rank(self._policy), number)
        else:
            self._ready.discard(job.id)
        if job.state is JobState.LEASED:
            self._leased[job.service].add(job.id)
        else:
            self._leased[job.service].discard(job.id)
        for kind, data in transition_events(old, job):
            self._append(job.id, kind, data)
        if job.finished_at is not None and (old is None or old.finished_at is None):
            bisect.insort(self._finished, (job.finished_at, number))
            heapq.heappush(self._untrimmed, (job.finished_at, job.id))
        elif job.finished_at is None and old is not None and old.finished_at is not None:
            del self._finished[bisect.bisect_left(self._finished, (old.finished_at, number))]
        rows = list(self._deliveries.get(job.id, {}).values())
        for row in stepped(rows, delivery_step(old, job), job.finished_at or self._clock.now()):
            self._put_row(row)
        return job

    def _row(self, key: tuple[str, str]) -> Delivery:
        return self._deliveries[key[0]][key[1]]

    def _put_row(self, row: Delivery) -> None:
        """Store an outbox row and keep the due and open sets in step."""
        self._deliveries.setdefault(row.job_id, {})[row.channel] = row
        self._row_numbers.setdefault(row.key, len(self._row_numbers))
        for index, state in ((self._due, DeliveryState.PENDING), (self._open, DeliveryState.WAITING)):
            if row.state is state:
                index.add(row.key)
            else:
                index.discard(row.key)

    def _append(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        self._last_seq += 1
        event = JobEvent(self._last_seq, job_id, kind, self._clock.now(), data)
        self._events[job_id].append(event)
        self._log.append(event)
        if kind in ACTIVITY_KINDS:
            self._activity[job_id] += 1

    def _trim(self, now: float) -> None:
        """Drop the progress and delta events of jobs final for `event_retention` seconds."""
        self._trimmed_at = now
        trimmed: set[str] = set()
        while self._untrimmed and self._untrimmed[0][0] <= now - self.event_retention:
            finished_at, job_id = heapq.heappop(self._untrimmed)
            if self._jobs[job_id].finished_at == finished_at and self._activity.pop(job_id, 0):
                trimmed.add(job_id)
                self._events[job_id] = [e for e in self._events[job_id] if e.kind not in ACTIVITY_KINDS]
        if trimmed:
            self._log = [e for e in self._log if e.kind not in ACTIVITY_KINDS or e.job_id not in trimmed]

    def _depth_view(self) -> dict[str, dict[str, int]]:
        view: dict[str, dict[str, int]] = {}
        for (service, state), count in self._depth.items():
            if count:
                view.setdefault(service, {})[state.value] = count
        return view
