"""The contract every queue backend passes: memory, SQLite on a real file, Redis on a real server.

Time is a `ManualClock`, so leases, back-offs and aging are moved by hand, never slept through.
"""

from __future__ import annotations

import threading

import pytest

from swell.core.clock import ManualClock
from swell.core.errors import Conflict, IllegalTransition, JobNotFound, LeaseLost, QueueFull, ValidationError
from swell.core.jobs import DeliveryState, Job, JobEvent, JobSpec, JobState, Priority
from swell.queue.base import EVENT_RETENTION, Outcome, QueueBackend, QueueStats, Update
from tests.queue.conftest import POLICY, OpenQueue


def spec(service: str = "svc", **changes: object) -> JobSpec:
    fields: dict[str, object] = {"input": {"n": 1}, **changes}
    return JobSpec(service=service, **fields)  # type: ignore[arg-type]


def submit(queue: QueueBackend, service: str = "svc", **changes: object) -> Job:
    job, created = queue.submit(spec(service, **changes))
    assert created
    return job


def lease_one(queue: QueueBackend, owner: str = "w1", service: str = "svc", **kwargs: object) -> Job:
    jobs = queue.lease(service, owner, **kwargs)  # type: ignore[arg-type]
    assert len(jobs) == 1, jobs
    return jobs[0]


# -- lifecycle -------------------------------------------------------------------------------------


def test_backend_satisfies_the_protocol(queue: QueueBackend) -> None:
    assert isinstance(queue, QueueBackend)
    assert repr(queue).startswith(type(queue).__name__)


def test_submit_stores_the_spec_and_get_returns_it(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(
        queue,
        input={"texts": ["a", "ü"], "nested": {"k": [1, 2.5, None]}},
        priority=Priority.HIGH,
        tenant="acme",
        model="m1",
        callback_url="https://example.com/hook",
        max_attempts=5,
        timeout=12.5,
    )
    assert job.state is JobState.QUEUED
    assert (job.attempts, job.created_at, job.available_at) == (0, clock.now(), clock.now())
    assert [(d.channel, d.state) for d in queue.deliveries(job.id)] == [("webhook", DeliveryState.WAITING)]
    stored = queue.get(job.id)
    assert stored == job
    assert stored.input == {"texts": ["a", "ü"], "nested": {"k": [1, 2.5, None]}}
    assert (stored.priority, stored.tenant, stored.model, stored.max_attempts) == (
        Priority.HIGH,
        "acme",
        "m1",
        5,
    )


def test_get_of_an_unknown_job_raises(queue: QueueBackend) -> None:
    with pytest.raises(JobNotFound):
        queue.get("no-such-job")


def test_lease_then_complete(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(queue)
    clock.advance(2)
    leased = lease_one(queue, "w1", lease_seconds=10)
    assert leased.id == job.id
    assert leased.state is JobState.LEASED
    assert (leased.attempts, leased.lease_owner) == (1, "w1")
    assert (leased.started_at, leased.lease_expires_at) == (clock.now(), clock.now() + 10)
    assert queue.get(job.id) == leased
    assert queue.lease("svc", "w2") == []

    clock.advance(3)
    done = queue.complete(job.id, "w1", {"out": [1.5, 2]})
    assert done.state is JobState.SUCCEEDED
    assert (done.result, done.finished_at, done.lease_owner) == ({"out": [1.5, 2]}, clock.now(), None)
    assert queue.get(job.id) == done


def test_a_finished_job_refuses_every_worker_event(queue: QueueBackend) -> None:
    job = submit(queue)
    lease_one(queue, "w1")
    queue.complete(job.id, "w1", {})
    with pytest.raises(LeaseLost):
        queue.complete(job.id, "w1", {"again": True})
    with pytest.raises(LeaseLost):
        queue.fail(job.id, "w1", "boom")
    with pytest.raises(LeaseLost):
        queue.release(job.id, "w1")
    with pytest.raises(LeaseLost):
        queue.renew([job.id], "w1", 30)
    with pytest.raises(IllegalTransition):
        queue.cancel(job.id)
    assert queue.get(job.id).result == {}


def test_only_the_owner_may_finish_a_leased_job(queue: QueueBackend) -> None:
    job = submit(queue)
    leased = lease_one(queue, "w1")
    for act in (
        lambda: queue.complete(job.id, "w2", {}),
        lambda: queue.fail(job.id, "w2", "x"),
        lambda: queue.release(job.id, "w2"),
        lambda: queue.renew([job.id], "w2", 30),
    ):
        with pytest.raises(LeaseLost):
            act()
    assert queue.get(job.id) == leased


def test_worker_events_on_a_queued_job_are_refused(queue: QueueBackend) -> None:
    job = submit(queue)
    with pytest.raises(LeaseLost):
        queue.complete(job.id, "w1", {})
    with pytest.raises(LeaseLost):
        queue.release(job.id, "w1")
    assert queue.get(job.id) == job


def test_worker_events_on_an_unknown_job_raise_not_found(queue: QueueBackend) -> None:
    with pytest.raises(JobNotFound):
        queue.complete("nope", "w1", {})
    with pytest.raises(JobNotFound):
        queue.cancel("nope")
    with pytest.raises(LeaseLost):
        queue.renew(["nope"], "w1", 30)


def test_cancel_a_queued_job(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(queue)
    cancelled = queue.cancel(job.id)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.finished_at == clock.now()
    assert queue.get(job.id) == cancelled
    assert queue.lease("svc", "w1") == []
    with pytest.raises(IllegalTransition):
        queue.cancel(job.id)


def test_cancel_of_a_leased_job_is_a_request_its_worker_answers(
    queue: QueueBackend, clock: ManualClock
) -> None:
    job, other = submit(queue), submit(queue)
    leased = {j.id: j for j in queue.lease("svc", "w1", max_jobs=2)}
    assert queue.cancel_requested([job.id, other.id, "nope"]) == set()
    requested = queue.cancel(job.id)
    assert (requested.state, requested.cancel_requested, requested.lease_owner) == (
        JobState.LEASED,
        True,
        "w1",
    )
    assert queue.cancel(job.id) == requested, "a second request changes nothing"
    assert queue.get(job.id) == requested and queue.get(other.id) == leased[other.id]
    assert queue.cancel_requested([job.id, other.id, "nope"]) == {job.id}
    assert requested.to_public()["cancel_requested"] is True
    clock.advance(1)
    [stopped, lost] = queue.settle("w1", [Outcome.cancelled(job.id), Outcome.cancelled("nope")])
    assert isinstance(stopped, Job) and isinstance(lost, JobNotFound)
    assert (stopped.state, stopped.finished_at, stopped.lease_owner) == (
        JobState.CANCELLED,
        clock.now(),
        None,
    )
    assert queue.get(job.id) == stopped
    assert queue.cancel_requested([job.id]) == {job.id}, "a cancelled job is one to stop too"
    assert queue.depth() == {"svc": {"leased": 1, "cancelled": 1}}
    assert [e.kind for e in queue.events(job.id)] == ["state", "state", "cancel", "state"]


def test_a_requested_cancel_wins_over_every_way_back_to_the_queue(
    queue: QueueBackend, clock: ManualClock
) -> None:
    jobs = [submit(queue) for _ in range(4)]
    queue.lease("svc", "w1", max_jobs=1)
    queue.lease("svc", "w2", max_jobs=1)
    queue.lease("svc", "w3", max_jobs=2)
    for job in jobs:
        queue.cancel(job.id)
    retried = queue.fail(jobs[0].id, "w1", "transient", retryable=True)
    released = queue.release(jobs[1].id, "w2")
    [handed] = queue.settle("w3", [Outcome.handback(jobs[2].id, "batch hung", batch_limit=1)])
    clock.advance(31)
    assert queue.reap() == 1  # the fourth job's lease ran out
    assert isinstance(handed, Job)
    for settled in (retried, released, handed, queue.get(jobs[3].id)):
        assert settled.state is JobState.CANCELLED, settled
    assert queue.lease("svc", "w9", max_jobs=10) == []


def test_a_result_that_arrives_before_the_cancel_is_honoured_wins(queue: QueueBackend) -> None:
    job = submit(queue)
    lease_one(queue)
    queue.cancel(job.id)
    done = queue.complete(job.id, "w1", {"ok": True})
    assert (done.state, done.result) == (JobState.SUCCEEDED, {"ok": True})
    with pytest.raises(IllegalTransition):
        queue.cancel(job.id)


def test_permanent_failure_fails_at_once(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(queue, max_attempts=5)
    lease_one(queue)
    failed = queue.fail(job.id, "w1", "bad input", retryable=False)
    assert failed.state is JobState.FAILED
    assert (failed.error, failed.finished_at, failed.attempts) == ("bad input", clock.now(), 1)
    assert queue.get(job.id) == failed
    clock.advance(1000)
    assert queue.lease("svc", "w1") == []


def test_retries_back_off_exponentially_then_the_job_is_dead(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(queue, max_attempts=4)
    for attempt, backoff in ((1, 1.0), (2, 2.0), (3, 4.0)):
        leased = lease_one(queue)
        assert leased.attempts == attempt
        retried = queue.fail(job.id, "w1", f"error {attempt}")
        assert retried.state is JobState.QUEUED
        assert retried.available_at == clock.now() + backoff
        assert retried.error == f"error {attempt}"
        clock.advance(backoff - 0.5)
        assert queue.lease("svc", "w1") == [], "leased before its back-off ran out"
        clock.advance(0.5)
    lease_one(queue)
    dead = queue.fail(job.id, "w1", "error 4")
    assert dead.state is JobState.DEAD
    assert (dead.attempts, dead.error, dead.finished_at) == (4, "error 4", clock.now())
    assert queue.get(job.id) == dead
    assert queue.jobs(state=JobState.DEAD) == [dead]


def test_release_hands_the_job_back_without_counting_an_attempt(queue: QueueBackend) -> None:
    job = submit(queue)
    lease_one(queue, "w1")
    released = queue.release(job.id, "w1")
    assert released.state is JobState.QUEUED
    assert (released.attempts, released.lease_owner) == (0, None)
    again = lease_one(queue, "w2")
    assert (again.id, again.attempts, again.lease_owner) == (job.id, 1, "w2")


# -- leases ----------------------------------------------------------------------------------------


def test_an_expired_lease_returns_the_job_after_a_back_off(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(queue)
    lease_one(queue, "w1", lease_seconds=10)
    clock.advance(9)
    assert queue.lease("svc", "w2") == []
    clock.advance(1)
    assert queue.lease("svc", "w2") == [], "the expired job must wait out its back-off"
    requeued = queue.get(job.id)
    assert requeued.state is JobState.QUEUED
    assert requeued.available_at == clock.now() + POLICY.backoff(1)
    assert requeued.error is not None and "w1" in requeued.error
    clock.advance(POLICY.backoff(1))
    second = lease_one(queue, "w2")
    assert (second.id, second.attempts, second.lease_owner) == (job.id, 2, "w2")
    with pytest.raises(LeaseLost):
        queue.complete(job.id, "w1", {"late": True})
    assert queue.complete(job.id, "w2", {"ok": 1}).state is JobState.SUCCEEDED


def test_an_expired_lease_with_no_attempts_left_buries_the_job(
    queue: QueueBackend, clock: ManualClock
) -> None:
    job = submit(queue, max_attempts=1)
    lease_one(queue, "w1", lease_seconds=5)
    clock.advance(5)
    assert queue.reap() == 1
    dead = queue.get(job.id)
    assert dead.state is JobState.DEAD
    assert dead.attempts == 1
    assert dead.error is not None and "expired" in dead.error
    assert queue.reap() == 0


def test_reap_covers_every_service(queue: QueueBackend, clock: ManualClock) -> None:
    a, b = submit(queue, "a"), submit(queue, "b")
    lease_one(queue, "w1", "a", lease_seconds=5)
    lease_one(queue, "w1", "b", lease_seconds=50)
    clock.advance(6)
    assert queue.reap() == 1
    assert queue.get(a.id).state is JobState.QUEUED
    assert queue.get(b.id).state is JobState.LEASED


def test_renew_extends_the_lease(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(queue)
    lease_one(queue, "w1", lease_seconds=10)
    clock.advance(8)
    queue.renew([job.id], "w1", 10)
    assert queue.get(job.id).lease_expires_at == clock.now() + 10
    clock.advance(8)
    assert queue.reap() == 0
    assert queue.complete(job.id, "w1", {}).state is JobState.SUCCEEDED


def test_renew_after_the_lease_was_reaped_raises_lease_lost(queue: QueueBackend, clock: ManualClock) -> None:
    held, lost = submit(queue), submit(queue)
    lease_one(queue, "w1", lease_seconds=100)
    lease_one(queue, "w1", lease_seconds=10)
    clock.advance(11)
    assert queue.reap() == 1
    with pytest.raises(LeaseLost) as raised:
        queue.renew([held.id, lost.id], "w1", 100)
    assert lost.id in str(raised.value)
    assert queue.get(held.id).lease_expires_at == clock.now() + 100, "the lease still held is renewed"


# -- ordering --------------------------------------------------------------------------------------


def test_higher_priority_first_then_oldest_first(queue: QueueBackend, clock: ManualClock) -> None:
    low = submit(queue, priority=Priority.LOW)
    clock.advance(1)
    normal1 = submit(queue)
    clock.advance(1)
    high = submit(queue, priority=Priority.HIGH)
    clock.advance(1)
    normal2 = submit(queue)
    order = [lease_one(queue).id for _ in range(4)]
    assert order == [high.id, normal1.id, normal2.id, low.id]


def test_aging_lets_a_low_job_that_waited_beat_a_fresh_high_one(
    queue: QueueBackend, clock: ManualClock
) -> None:
    low = submit(queue, priority=Priority.LOW)
    clock.advance(2 * POLICY.aging_seconds + 1)
    high = submit(queue, priority=Priority.HIGH)
    assert [j.id for j in queue.lease("svc", "w1", max_jobs=2)] == [low.id, high.id]


def test_lease_takes_a_batch_in_rank_order(queue: QueueBackend, clock: ManualClock) -> None:
    ids = []
    for _ in range(5):
        ids.append(submit(queue).id)
        clock.advance(0.01)
    batch = queue.lease("svc", "w1", max_jobs=3)
    assert [j.id for j in batch] == ids[:3]
    assert all(j.lease_owner == "w1" for j in batch)
    assert [j.id for j in queue.lease("svc", "w2", max_jobs=10)] == ids[3:]


def test_lease_takes_only_its_service(queue: QueueBackend) -> None:
    submit(queue, "other")
    assert queue.lease("svc", "w1") == []
    assert lease_one(queue, "w1", "other").service == "other"


def test_lease_prefers_jobs_for_the_model_it_holds(queue: QueueBackend, clock: ManualClock) -> None:
    x1 = submit(queue, model="x")
    clock.advance(1)
    y = submit(queue, model="y")
    clock.advance(1)
    none = submit(queue)
    clock.advance(1)
    x2 = submit(queue, model="x", priority=Priority.LOW)
    assert [j.id for j in queue.lease("svc", "w1", max_jobs=3, model="x")] == [x1.id, x2.id, y.id]
    assert [j.id for j in queue.lease("svc", "w2", model="z")] == [none.id]


# -- idempotency and admission ---------------------------------------------------------------------


def test_the_same_idempotency_key_returns_the_existing_job(queue: QueueBackend) -> None:
    first = submit(queue, idempotency_key="k1", input={"b": 1, "a": [1, 2]}, model="m")
    again, created = queue.submit(spec(idempotency_key="k1", input={"a": [1, 2], "b": 1}, model="m"))
    assert (again, created) == (first, False), "the same request, keys in another order"
    other_service = submit(queue, "other", idempotency_key="k1", input={"n": 2})
    assert other_service.id != first.id
    lease_one(queue)
    queue.complete(first.id, "w1", {})
    after, created = queue.submit(spec(idempotency_key="k1", input={"a": [1, 2], "b": 1}, model="m"))
    assert (after.id, after.state, created) == (first.id, JobState.SUCCEEDED, False)
    assert queue.statistics().deduplicated == 2


@pytest.mark.parametrize(
    "changes", [{"input": {"b": 2, "a": [1, 2]}}, {"model": "other"}, {"model": None}], ids=str
)
def test_a_reused_idempotency_key_with_another_request_is_a_conflict(
    queue: QueueBackend, changes: dict[str, object]
) -> None:
    first = submit(queue, idempotency_key="k1", input={"b": 1, "a": [1, 2]}, model="m")
    request = {"input": {"b": 1, "a": [1, 2]}, "model": "m", **changes}
    with pytest.raises(Conflict) as conflict:
        queue.submit(spec(idempotency_key="k1", **request))
    assert conflict.value.field == "idempotency_key" and conflict.value.status_code == 409
    assert first.id in conflict.value.message
    assert queue.jobs() == [first], "nothing stored"
    assert queue.statistics().deduplicated == 0


def test_concurrent_submits_with_one_key_make_one_job(open_queue: OpenQueue) -> None:
    queues = [open_queue() for _ in range(2)]  # two handles: two connections where the backend has them
    barrier = threading.Barrier(8)
    results: list[tuple[Job, bool]] = []

    def submit_once(i: int) -> None:
        barrier.wait()
        results.append(queues[i % 2].submit(spec(idempotency_key="race", input={"same": True})))

    threads = [threading.Thread(target=submit_once, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1
    assert len(queues[0].jobs()) == 1


def test_concurrent_leases_deliver_each_job_once(open_queue: OpenQueue) -> None:
    queues = [open_queue() for _ in range(2)]
    submitted = {submit(queues[0]).id for _ in range(60)}
    delivered: list[str] = []
    barrier = threading.Barrier(6)

    def work(i: int) -> None:
        queue, owner = queues[i % 2], f"w{i}"
        barrier.wait()
        while jobs := queue.lease("svc", owner, max_jobs=1 + i % 3):
            for job in jobs:
                delivered.append(job.id)
                queue.complete(job.id, owner, {"by": owner})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(delivered) == sorted(submitted), "a job was delivered twice or never"
    assert queues[0].depth() == {"svc": {"succeeded": 60}}


def test_admission_refuses_a_full_service_with_retry_after(queue: QueueBackend, clock: ManualClock) -> None:
    first = submit(queue)
    submit(queue)
    submit(queue, "other")
    with pytest.raises(QueueFull) as full:
        queue.submit(spec(), limit=2)
    assert full.value.retry_after == 30.0, "nothing finished lately: the longest wait"
    lease_one(queue)
    with pytest.raises(QueueFull):
        queue.submit(spec(), limit=2)
    queue.complete(first.id, "w1", {})
    job, created = queue.submit(spec(), limit=2)
    assert created and job.state is JobState.QUEUED
    assert queue.statistics().rejected == 2


def test_retry_after_follows_the_recent_completion_rate(queue: QueueBackend, clock: ManualClock) -> None:
    for _ in range(6):
        submit(queue)
    for job in queue.lease("svc", "w1", max_jobs=6):
        clock.advance(1)
        queue.complete(job.id, "w1", {})
    for _ in range(3):
        submit(queue)
    with pytest.raises(QueueFull) as full:
        queue.submit(spec(), limit=3)
    # six completions in the last minute: one every 10 s, so one free place in about 10 s
    assert full.value.retry_after == pytest.approx(10.0)


def test_an_idempotent_retry_is_answered_even_when_full(queue: QueueBackend) -> None:
    job = submit(queue, idempotency_key="k")
    again, created = queue.submit(spec(idempotency_key="k"), limit=1)
    assert (again.id, created) == (job.id, False)


# -- batches ---------------------------------------------------------------------------------------


def test_submit_many_stores_in_order_with_idempotency_and_admission_per_spec(queue: QueueBackend) -> None:
    outcomes = queue.submit_many(
        [
            spec(input={"n": 1}),
            spec(input={"n": 2}, idempotency_key="k"),
            spec(input={"n": 2}, idempotency_key="k"),  # the same key in the same batch
            spec(input={"n": 3}, idempotency_key="k"),  # ... for another request
            spec(input={"n": 4}),  # the service's third active job: over its limit
            spec("other", input={"n": 5}),  # another service, no limit given
        ],
        limits={"svc": 2},
    )
    first, keyed, repeat, conflict, refused, other = outcomes
    assert isinstance(first, tuple) and isinstance(keyed, tuple) and isinstance(other, tuple)
    assert [(job.input, created) for job, created in (first, keyed, other)] == [
        ({"n": 1}, True),
        ({"n": 2}, True),
        ({"n": 5}, True),
    ]
    assert repeat == (keyed[0], False), "a key repeated within a batch maps to one job"
    assert isinstance(conflict, Conflict) and conflict.field == "idempotency_key"
    assert isinstance(refused, QueueFull) and refused.retry_after > 0
    assert [job.input for job in queue.jobs(service="svc")] == [{"n": 2}, {"n": 1}]
    stats = queue.statistics()
    assert (stats.submitted, stats.deduplicated, stats.rejected) == (3, 1, 1)
    assert queue.submit_many([]) == []


def test_settle_records_each_outcome_and_reports_lost_leases_in_place(
    queue: QueueBackend, clock: ManualClock
) -> None:
    ok, retry, broken, stolen = (submit(queue, input={"n": n}) for n in range(4))
    queue.lease("svc", "w1", max_jobs=3)
    assert [job.id for job in queue.lease("svc", "w2")] == [stolen.id]
    clock.advance(1)
    settled = queue.settle(
        "w1",
        [
            Outcome(ok.id, result={"n": 0}),
            Outcome.failure(retry.id, "RuntimeError: flaky"),
            Outcome.failure(broken.id, "ValidationError: bad input", retryable=False),
            Outcome(stolen.id, result={"n": 3}),  # leased by w2, not w1
            Outcome("no-such-job", result={}),
        ],
    )
    assert [type(x) for x in settled] == [Job, Job, Job, LeaseLost, JobNotFound]
    assert queue.get(ok.id).state is JobState.SUCCEEDED and queue.get(ok.id).result == {"n": 0}
    assert queue.get(retry.id).state is JobState.QUEUED and queue.get(retry.id).error == "RuntimeError: flaky"
    assert queue.get(broken.id).state is JobState.FAILED
    assert queue.get(stolen.id).state is JobState.LEASED, "another worker's job is untouched"
    assert queue.get(ok.id).finished_at == clock.now()
    stats = queue.statistics()
    assert (stats.succeeded, stats.failed) == (1, 1)
    assert queue.settle("w1", []) == []


# the outbox (deliveries, webhooks among them): tests/queue/test_outbox.py


# -- listing and statistics ------------------------------------------------------------------------


def test_jobs_newest_first_with_filters(queue: QueueBackend, clock: ManualClock) -> None:
    made = []
    for service in ("a", "b", "a", "a"):
        made.append(submit(queue, service))
        clock.advance(1)
    queue.cancel(made[2].id)
    assert [j.id for j in queue.jobs()] == [j.id for j in reversed(made)]
    assert [j.id for j in queue.jobs(service="a", limit=2)] == [made[3].id, made[2].id]
    assert [j.id for j in queue.jobs(state=JobState.CANCELLED)] == [made[2].id]
    assert [j.id for j in queue.jobs(service="a", state=JobState.QUEUED)] == [made[3].id, made[0].id]
    assert queue.jobs(service="c") == []


def finished(queue: QueueBackend, after: int = 0) -> list[tuple[str, str]]:
    """(job id, state) of the final state events after `after`, in order."""
    return [(e.job_id, e.data["state"]) for e in queue.events_since(after) if e.data["state"] in FINAL]


FINAL = {state.value for state in JobState if state.final}


def test_events_since_follows_every_transition_in_commit_order(
    queue: QueueBackend, clock: ManualClock
) -> None:
    early, late, open_ = submit(queue), submit(queue), submit(queue)
    clock.advance(5)
    queue.cancel(late.id)
    cursor = queue.events_since(0)[-1].seq
    queue.cancel(early.id)
    clock.advance(5)
    lease_one(queue)
    queue.complete(open_.id, "w1", {"big": "x" * 100})
    events = queue.events_since(0)
    assert [(e.job_id, e.data["state"]) for e in events] == [
        (early.id, "queued"),
        (late.id, "queued"),
        (open_.id, "queued"),
        (late.id, "cancelled"),
        (early.id, "cancelled"),
        (open_.id, "leased"),
        (open_.id, "succeeded"),
    ]
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    assert finished(queue, cursor) == [(early.id, "cancelled"), (open_.id, "succeeded")]
    assert queue.events_since(cursor, limit=1) == [events[4]]
    last = events[-1]
    assert last.data == {
        "state": "succeeded",
        "attempt": 1,
        "service": "svc",
        "created_at": open_.created_at,
        "started_at": clock.now(),
        "finished_at": clock.now(),
    }
    assert queue.events_since(last.seq) == []
    with pytest.raises(ValidationError):
        queue.events_since(0, kinds=("nonsense",))


def test_a_jobs_events_tell_its_story(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(queue, max_attempts=2)
    lease_one(queue)
    clock.advance(1)
    queue.fail(job.id, "w1", "OSError: disk")
    clock.advance(60)
    lease_one(queue)
    queue.fail(job.id, "w1", "OSError: disk again")
    events = queue.events(job.id)
    assert [(e.kind, e.data["state"], e.data["attempt"], e.data.get("error")) for e in events] == [
        ("state", "queued", 0, None),
        ("state", "leased", 1, None),
        ("state", "queued", 1, "OSError: disk"),
        ("state", "leased", 2, None),
        ("state", "dead", 2, "OSError: disk again"),
    ]
    assert all(isinstance(e, JobEvent) and e.job_id == job.id for e in events)
    assert queue.events(job.id, after=events[2].seq) == events[3:]
    assert queue.events(job.id, after=events[0].seq, limit=2) == events[1:3]
    assert events[-1].at == clock.now()
    with pytest.raises(JobNotFound):
        queue.events("nope")


def test_report_records_progress_and_deltas_of_held_jobs_only(queue: QueueBackend) -> None:
    job, other = submit(queue), submit(queue)
    lease_one(queue, "w1")
    queue.report(
        "w1",
        [
            Update(job.id, fraction=0.25, message="step 5/20"),
            Update(job.id, delta="Hel"),
            Update(job.id, delta="lo", fraction=1.5, preview="preview-1.png"),
            Update(other.id, fraction=0.5),  # queued: nobody holds it
            Update("nope", delta="x"),
        ],
    )
    queue.report("w2", [Update(job.id, fraction=0.9)])  # not the owner: ignored
    queue.report("w1", [])
    stored = queue.get(job.id)
    assert (stored.progress, stored.progress_message) == (1.0, "step 5/20")
    assert stored.to_public()["progress"] == {"fraction": 1.0, "message": "step 5/20"}
    assert queue.get(other.id).progress is None and "progress" not in queue.get(other.id).to_public()
    activity = [(e.kind, e.data) for e in queue.events(job.id) if e.kind != "state"]
    assert activity == [
        ("progress", {"fraction": 0.25, "message": "step 5/20"}),
        ("delta", {"text": "Hel"}),
        ("progress", {"fraction": 1.0, "message": "step 5/20", "preview": "preview-1.png"}),
        ("delta", {"text": "lo"}),
    ]
    assert [e.data["text"] for e in queue.events_since(0, kinds=("delta",))] == ["Hel", "lo"]
    mixed = queue.events_since(0, kinds=("state", "progress"))
    assert [e.kind for e in mixed] == ["state", "state", "state", "progress", "progress"]
    assert [e.seq for e in mixed] == sorted(e.seq for e in mixed)
    done = queue.complete(job.id, "w1", {})
    assert done.progress == 1.0
    queue.report("w1", [Update(job.id, delta="late")])  # final now: ignored
    assert [e.kind for e in queue.events(job.id)][-1] == "state"


def test_a_new_delivery_starts_without_progress(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(queue)
    lease_one(queue)
    queue.report("w1", [Update(job.id, fraction=0.5)])
    queue.fail(job.id, "w1", "transient")
    assert queue.get(job.id).progress == 0.5
    clock.advance(60)
    assert lease_one(queue, "w2").progress is None


def test_activity_events_are_capped_per_job(queue: QueueBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("swell.queue._common.MAX_ACTIVITY_EVENTS", 3)
    job = submit(queue)
    lease_one(queue)
    queue.report("w1", [Update(job.id, delta="a"), Update(job.id, delta="b")])
    queue.report("w1", [Update(job.id, delta="c", fraction=0.5), Update(job.id, fraction=0.75)])
    kept = [e.data for e in queue.events(job.id) if e.kind != "state"]
    assert kept == [{"text": "a"}, {"text": "b"}, {"fraction": 0.5}]
    assert queue.get(job.id).progress == 0.75, "the progress moves on past the cap"
    queue.complete(job.id, "w1", {})
    assert queue.events(job.id)[-1].data["state"] == "succeeded", "state events are never capped"


def test_activity_of_old_final_jobs_is_trimmed_and_their_states_kept(
    queue: QueueBackend, clock: ManualClock
) -> None:
    old, running = submit(queue), submit(queue)
    queue.lease("svc", "w1", max_jobs=2)
    queue.report("w1", [Update(old.id, fraction=0.5, delta="x"), Update(running.id, delta="y")])
    queue.complete(old.id, "w1", {})
    states = [e for e in queue.events(old.id) if e.kind == "state"]
    clock.advance(EVENT_RETENTION - 1)
    queue.renew([running.id], "w1", 30)
    queue.reap()
    assert len(queue.events(old.id)) == 5, "not old enough yet"
    clock.advance(2)
    queue.reap()
    assert queue.events(old.id) == states
    assert [e.job_id for e in queue.events_since(0, kinds=("progress", "delta"))] == [running.id]
    assert [e.data["text"] for e in queue.events(running.id) if e.kind == "delta"] == ["y"]


# -- the completions of a job of n > 1, streamed apart ---------------------------------------------


def test_report_appends_one_delta_per_completion_by_index(queue: QueueBackend) -> None:
    job = submit(queue)
    lease_one(queue)
    queue.report(
        "w1",
        [
            Update(job.id, deltas={1: "B", 0: "a"}, fraction=0.5),
            Update(job.id, delta="b", deltas={2: "C", 3: ""}),
            Update(job.id, delta="c", deltas={0: "!"}),  # `delta` first, then deltas[0]
        ],
    )
    activity = [(e.kind, e.data) for e in queue.events(job.id) if e.kind != "state"]
    assert activity == [
        ("progress", {"fraction": 0.5}),
        ("delta", {"text": "a"}),
        ("delta", {"text": "B", "index": 1}),
        ("delta", {"text": "b"}),
        ("delta", {"text": "C", "index": 2}),
        ("delta", {"text": "c!"}),
    ]
    deltas = queue.events_since(0, kinds=("delta",))
    by_index = {i: "".join(e.data["text"] for e in deltas if e.data.get("index", 0) == i) for i in (0, 1, 2)}
    assert by_index == {0: "abc!", 1: "B", 2: "C"}
    queue.complete(job.id, "w1", {})
    queue.report("w1", [Update(job.id, deltas={1: "late"})])  # final now: ignored
    assert [e.kind for e in queue.events(job.id)][-1] == "state"


def test_the_cap_counts_every_completions_delta(queue: QueueBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("swell.queue._common.MAX_ACTIVITY_EVENTS", 3)
    job = submit(queue)
    lease_one(queue)
    queue.report("w1", [Update(job.id, fraction=0.25, deltas={0: "a", 1: "b"})])
    queue.report("w1", [Update(job.id, deltas={0: "c", 1: "d"}), Update(job.id, fraction=0.75)])
    kept = [e.data for e in queue.events(job.id) if e.kind != "state"]
    assert kept == [{"fraction": 0.25}, {"text": "a"}, {"text": "b", "index": 1}]
    assert queue.get(job.id).progress == 0.75, "the progress moves on past the cap"


def test_an_update_refuses_a_bad_completion_index() -> None:
    for bad in (-1, True, "1"):
        with pytest.raises(ValueError, match="deltas"):
            Update("j", deltas={bad: "x"})  # type: ignore[dict-item]
    assert Update("j", delta="a", deltas={2: "c", 1: "b"}).texts() == [(0, "a"), (1, "b"), (2, "c")]


def test_get_many_returns_those_that_exist_in_the_order_asked(queue: QueueBackend) -> None:
    a, b = submit(queue), submit(queue)
    assert queue.get_many([b.id, "nope", a.id]) == [b, a]
    assert queue.get_many([]) == []


def test_depth_and_statistics(queue: QueueBackend, clock: ManualClock) -> None:
    assert queue.depth() == {}
    assert queue.statistics() == QueueStats()
    jobs = [submit(queue, "a", max_attempts=1) for _ in range(5)] + [submit(queue, "b")]
    queue.submit(spec("b", idempotency_key="k"))
    queue.submit(spec("b", idempotency_key="k"))
    with pytest.raises(QueueFull):
        queue.submit(spec("a"), limit=5)
    leased = [lease_one(queue, "w1", "a", lease_seconds=5) for _ in range(4)]  # each alone
    queue.complete(leased[0].id, "w1", {})
    queue.fail(leased[1].id, "w1", "bad", retryable=False)
    queue.fail(leased[2].id, "w1", "flaky")  # max_attempts=1: dead
    queue.cancel(jobs[4].id)
    clock.advance(5)
    assert queue.reap() == 1  # leased[3], out of attempts: dead
    assert queue.depth() == {
        "a": {"succeeded": 1, "failed": 1, "dead": 2, "cancelled": 1},
        "b": {"queued": 2},
    }
    stats = queue.statistics()
    assert stats == QueueStats(
        submitted=7,
        deduplicated=1,
        rejected=1,
        leased=4,
        succeeded=1,
        failed=1,
        dead=2,
        expired=1,
        depth=queue.depth(),
    )


# -- batches that fail as a whole ------------------------------------------------------------------


def test_a_lease_records_its_batch_size(queue: QueueBackend) -> None:
    for _ in range(3):
        submit(queue)
    assert [j.leased_with for j in queue.lease("svc", "w1", max_jobs=2)] == [2, 2]
    assert [j.leased_with for j in queue.lease("svc", "w1", max_jobs=5)] == [1]


def test_a_handed_back_batch_goes_back_split_and_uncounted(queue: QueueBackend, clock: ManualClock) -> None:
    jobs = [submit(queue, max_attempts=1) for _ in range(4)]
    batch = queue.lease("svc", "w1", max_jobs=4)
    clock.advance(3)
    done, *rest = batch
    settled = queue.settle(
        "w1",
        [Outcome(done.id, result={"ok": 1})]
        + [Outcome.handback(j.id, "TimeoutError: the batch ran past 60 s", batch_limit=2) for j in rest],
    )
    assert [s.state for s in settled if isinstance(s, Job)] == [JobState.SUCCEEDED] + [JobState.QUEUED] * 3
    for job in rest:
        back = queue.get(job.id)
        assert (back.attempts, back.batch_limit, back.available_at) == (0, 2, clock.now())
        assert back.error == "TimeoutError: the batch ran past 60 s"
    assert queue.get(jobs[0].id).result == {"ok": 1}, "a job finished in the batch is settled"
    assert [len(queue.lease("svc", "w2", max_jobs=4)) for _ in range(3)] == [2, 1, 0]
    stats = queue.statistics()
    assert (stats.split, stats.succeeded, stats.dead) == (3, 1, 0)


def test_a_handback_of_a_job_leased_alone_counts_as_its_own_failure(
    queue: QueueBackend, clock: ManualClock
) -> None:
    job = submit(queue, max_attempts=2)
    lease_one(queue)
    (retried,) = queue.settle("w1", [Outcome.handback(job.id, "crashed", batch_limit=1)])
    assert isinstance(retried, Job)
    assert (retried.state, retried.attempts, retried.available_at) == (
        JobState.QUEUED,
        1,
        clock.now() + POLICY.backoff(1),
    )
    clock.advance(POLICY.backoff(1))
    lease_one(queue)
    (dead,) = queue.settle("w1", [Outcome.handback(job.id, "crashed again", batch_limit=1)])
    assert isinstance(dead, Job) and (dead.state, dead.error) == (JobState.DEAD, "crashed again")
    assert queue.statistics().split == 0


def test_a_handback_that_does_not_shrink_the_batch_counts(queue: QueueBackend) -> None:
    first, second = submit(queue), submit(queue)
    queue.lease("svc", "w1", max_jobs=2)
    queue.settle("w1", [Outcome.handback(j.id, "slow", batch_limit=8) for j in (first, second)])
    assert [queue.get(j.id).attempts for j in (first, second)] == [1, 1], "a limit of 8 splits nothing"
    assert [queue.get(j.id).batch_limit for j in (first, second)] == [8, 8]


def test_an_expired_batch_lease_splits_the_batch_without_counting(
    queue: QueueBackend, clock: ManualClock
) -> None:
    jobs = [submit(queue, max_attempts=1) for _ in range(5)]
    queue.lease("svc", "w1", max_jobs=5, lease_seconds=10)
    clock.advance(10)
    assert queue.reap() == 5
    for job in jobs:
        back = queue.get(job.id)
        assert (back.state, back.attempts, back.batch_limit) == (JobState.QUEUED, 0, 2)
        assert back.error is not None and "w1" in back.error and "batch of 5" in back.error
    assert [len(queue.lease("svc", "w2", max_jobs=5)) for _ in range(4)] == [2, 2, 1, 0]
    assert queue.statistics().expired == 5 and queue.statistics().split == 5


def test_a_poisonous_job_ends_alone_and_dead_while_its_batch_mates_succeed(
    queue: QueueBackend, clock: ManualClock
) -> None:
    """A worker whose batch never finishes while it holds the poisonous job (its lease runs out)."""
    jobs = [submit(queue, input={"n": n}, max_attempts=2) for n in range(8)]
    poison = jobs[5].id
    for _ in range(40):
        batch = queue.lease("svc", "w1", max_jobs=8, lease_seconds=10)
        if not batch and not queue.depth()["svc"].get("queued"):
            break
        if any(job.id == poison for job in batch):
            clock.advance(10)
            queue.reap()
        else:
            queue.settle("w1", [Outcome(job.id, result={"n": job.input["n"]}) for job in batch])
        clock.advance(POLICY.backoff_cap)
    final = {job.id: queue.get(job.id) for job in jobs}
    assert final[poison].state is JobState.DEAD and final[poison].attempts == 2
    others = [job for job_id, job in final.items() if job_id != poison]
    assert all(job.state is JobState.SUCCEEDED and job.attempts == 1 for job in others), others


def test_lease_never_exceeds_a_batch_limit_and_skips_what_does_not_fit(
    queue: QueueBackend, clock: ManualClock
) -> None:
    a, b, c, d = (submit(queue, input={"n": n}) for n in range(4))
    queue.lease("svc", "w0", max_jobs=4)
    queue.settle("w0", [Outcome.handback(b.id, "split", batch_limit=1)])
    queue.settle("w0", [Outcome.handback(j.id, "split", batch_limit=3) for j in (a, c, d)])
    assert [j.id for j in queue.lease("svc", "w1", max_jobs=4)] == [a.id, c.id, d.id], "b needs a lease alone"
    assert [j.id for j in queue.lease("svc", "w1", max_jobs=4)] == [b.id]
    clock.advance(1)
    e = submit(queue)
    queue.settle("w1", [Outcome.handback(b.id, "again", batch_limit=1)])  # alone: counted, backs off
    clock.advance(POLICY.backoff(1))
    assert [j.id for j in queue.lease("svc", "w1", max_jobs=4)] == [e.id], "b may not join e"
    assert [j.id for j in queue.lease("svc", "w1", max_jobs=4)] == [b.id]


def test_a_batch_limit_caps_the_jobs_before_it(queue: QueueBackend) -> None:
    first, second, third = submit(queue), submit(queue), submit(queue)
    queue.lease("svc", "w0", max_jobs=3)
    queue.settle("w0", [Outcome.handback(j.id, "split", batch_limit=2) for j in (first, second, third)])
    assert [j.id for j in queue.lease("svc", "w1", max_jobs=3)] == [first.id, second.id]


# -- re-drive and bulk cancel ----------------------------------------------------------------------


def test_retry_re_drives_a_dead_job_from_the_start(queue: QueueBackend, clock: ManualClock) -> None:
    job = submit(queue, max_attempts=1, callback_url="https://example.com/hook")
    lease_one(queue)
    queue.fail(job.id, "w1", "RuntimeError: out of memory")
    ((row, _),) = queue.due_deliveries()
    queue.save_delivery(row.delivered(clock.now()))
    clock.advance(5)
    again = queue.retry(job.id)
    assert (again.state, again.attempts, again.available_at, again.finished_at) == (
        JobState.QUEUED,
        0,
        clock.now(),
        None,
    )
    assert [(d.state, d.attempts) for d in queue.deliveries(job.id)] == [(DeliveryState.WAITING, 0)]
    assert again.error == "RuntimeError: out of memory", "the last error stays until replaced"
    assert queue.get(job.id) == again
    assert queue.due_deliveries() == []
    assert finished(queue) == [(job.id, "dead")]
    assert queue.events(job.id)[-1].data == {"state": "queued", "attempt": 0, "service": "svc"}
    assert queue.depth() == {"svc": {"queued": 1}}
    lease_one(queue)
    done = queue.complete(job.id, "w1", {"ok": True})
    assert finished(queue) == [(job.id, "dead"), (job.id, "succeeded")] and queue.get(job.id) == done
    assert [j.id for _, j in queue.due_deliveries()] == [job.id]
    stats = queue.statistics()
    assert (stats.redriven, stats.dead, stats.succeeded) == (1, 1, 1)


def test_retry_re_drives_failed_and_cancelled_jobs(queue: QueueBackend) -> None:
    failed, cancelled = submit(queue), submit(queue)
    lease_one(queue)
    queue.fail(failed.id, "w1", "bad input", retryable=False)
    queue.cancel(cancelled.id)
    assert queue.retry(failed.id).state is JobState.QUEUED
    assert queue.retry(cancelled.id).state is JobState.QUEUED
    assert {j.id for j in queue.lease("svc", "w1", max_jobs=5)} == {failed.id, cancelled.id}


def test_retry_refuses_a_job_that_is_not_finished_for_good(queue: QueueBackend) -> None:
    queued, leased, done = submit(queue), submit(queue), submit(queue)
    queue.lease("svc", "w1")  # queued is first in line
    lease_one(queue)
    queue.lease("svc", "w1")
    queue.complete(done.id, "w1", {})
    for job in (queued, leased, done):
        state = queue.get(job.id)
        with pytest.raises(IllegalTransition):
            queue.retry(job.id)
        assert queue.get(job.id) == state
    with pytest.raises(JobNotFound):
        queue.retry("no-such-job")


def test_cancel_many_cancels_what_is_queued(queue: QueueBackend, clock: ManualClock) -> None:
    queued = [submit(queue) for _ in range(3)]
    running = lease_one(queue)
    other = submit(queue, "other")
    assert queue.cancel_many(service="svc") == 2
    assert queue.get(running.id).state is JobState.LEASED
    assert [queue.get(j.id).state for j in queued[1:]] == [JobState.CANCELLED] * 2
    assert queue.get(other.id).state is JobState.QUEUED
    assert queue.cancel_many(service="svc") == 0
    assert queue.cancel_many(service="nothing") == 0
    assert queue.cancel_many() == 1
    assert queue.depth() == {"svc": {"leased": 1, "cancelled": 2}, "other": {"cancelled": 1}}


# -- paging ----------------------------------------------------------------------------------------


def pages(queue: QueueBackend, size: int, **filters: object) -> list[list[str]]:
    found: list[list[str]] = []
    cursor: str | None = None
    while page := queue.jobs(limit=size, before=cursor, **filters):  # type: ignore[arg-type]
        found.append([j.id for j in page])
        cursor = page[-1].id
    return found


def test_jobs_page_newest_first_with_a_cursor(queue: QueueBackend, clock: ManualClock) -> None:
    made = []
    for n in range(7):
        made.append(submit(queue, "a" if n % 3 else "b"))
        if n % 2:
            clock.advance(1)  # some share a creation time: then newest submitted first
    newest = [j.id for j in reversed(made)]
    assert pages(queue, 3) == [newest[:3], newest[3:6], newest[6:]]
    paged = [job_id for page in pages(queue, 2, service="a") for job_id in page]
    assert paged == [j.id for j in reversed(made) if j.service == "a"]
    assert pages(queue, 100) == [newest]


def test_a_cursor_stays_valid_when_its_job_changes_state(queue: QueueBackend, clock: ManualClock) -> None:
    made = []
    for _ in range(4):
        made.append(submit(queue))
        clock.advance(1)
    first_page = queue.jobs(state=JobState.QUEUED, limit=2)
    assert [j.id for j in first_page] == [made[3].id, made[2].id]
    queue.cancel(made[2].id)
    rest = queue.jobs(state=JobState.QUEUED, limit=2, before=first_page[-1].id)
    assert [j.id for j in rest] == [made[1].id, made[0].id]


def test_an_unknown_cursor_is_a_validation_error(queue: QueueBackend) -> None:
    submit(queue)
    with pytest.raises(ValidationError) as error:
        queue.jobs(before="no-such-job")
    assert error.value.field == "cursor"


# -- health ----------------------------------------------------------------------------------------


def test_probe_passes_on_healthy_storage_and_changes_no_job(queue: QueueBackend) -> None:
    job = submit(queue)
    queue.probe()
    queue.probe()
    assert queue.jobs() == [job] and queue.statistics().submitted == 1


# -- durability ------------------------------------------------------------------------------------


def test_reopening_keeps_every_job(open_queue: OpenQueue, backend_name: str, clock: ManualClock) -> None:
    if backend_name == "memory":
        pytest.skip("the memory queue lives and dies with its process")
    queue = open_queue()
    queued = submit(queue, idempotency_key="q", priority=Priority.LOW)
    running = submit(queue, idempotency_key="r", priority=Priority.HIGH)
    done = submit(queue, callback_url="https://example.com/hook")
    assert lease_one(queue, "w1", lease_seconds=30).id == running.id
    assert lease_one(queue, "w1").id == done.id
    finished = queue.complete(done.id, "w1", {"ok": True})
    split = submit(queue, "other")
    lease_one(queue, "w1", "other")
    queue.settle("w1", [Outcome.handback(split.id, "crashed", batch_limit=1)])
    before = {j.id: j for j in queue.jobs()}
    queue.close()

    reopened = open_queue()
    assert {j.id: j for j in reopened.jobs()} == before
    assert reopened.get(finished.id).result == {"ok": True}
    assert reopened.submit(spec(idempotency_key="q"))[0].id == queued.id
    with pytest.raises(Conflict):
        reopened.submit(spec(idempotency_key="q", input={"n": 2}))
    assert reopened.get(split.id).batch_limit == 1 and reopened.get(running.id).leased_with == 1
    assert reopened.depth() == {"svc": {"queued": 1, "leased": 1, "succeeded": 1}, "other": {"queued": 1}}
    assert [j.id for _, j in reopened.due_deliveries()] == [done.id]
    clock.advance(30)
    assert reopened.reap() == 1
    clock.advance(POLICY.backoff(1))
    assert [j.id for j in reopened.lease("svc", "w2", max_jobs=2)] == [running.id, queued.id]


# -- model affinity (lease with `models` and `starve_after`) ---------------------------------------


def ids(jobs: list[Job]) -> list[str]:
    return [job.id for job in jobs]


def test_affine_lease_takes_only_jobs_of_held_models_while_any_wait(
    queue: QueueBackend, clock: ManualClock
) -> None:
    x1 = submit(queue, model="x")
    clock.advance(1)
    y = submit(queue, model="y")
    clock.advance(1)
    x2 = submit(queue, model="x", priority=Priority.LOW)
    assert ids(queue.lease("svc", "w1", max_jobs=3, models=["x"])) == [x1.id, x2.id]
    assert ids(queue.lease("svc", "w1", max_jobs=3, models=["x"])) == [y.id]  # none of x left


def test_affine_lease_merges_held_models_by_rank(queue: QueueBackend, clock: ManualClock) -> None:
    x1 = submit(queue, model="x")
    clock.advance(1)
    submit(queue, model="z")
    clock.advance(1)
    y1 = submit(queue, model="y")
    clock.advance(1)
    x2 = submit(queue, model="x")
    clock.advance(1)
    y2 = submit(queue, model="y", priority=Priority.HIGH)
    assert ids(queue.lease("svc", "w1", max_jobs=4, models=["x", "y"])) == [y2.id, x1.id, y1.id, x2.id]


def test_affine_lease_of_a_cold_model_takes_one_model_only(queue: QueueBackend, clock: ManualClock) -> None:
    y1 = submit(queue, model="y")
    clock.advance(1)
    z = submit(queue, model="z")
    clock.advance(1)
    y2 = submit(queue, model="y")
    clock.advance(1)
    none1 = submit(queue)
    clock.advance(1)
    none2 = submit(queue)
    assert ids(queue.lease("svc", "w1", max_jobs=3, models=["x"])) == [y1.id, y2.id]
    assert ids(queue.lease("svc", "w1", max_jobs=3, starve_after=1000)) == [z.id]  # holds nothing
    assert ids(queue.lease("svc", "w1", max_jobs=3, models=["x"])) == [none1.id, none2.id]


def test_starvation_guard_serves_a_cold_model_that_waited_too_long(
    queue: QueueBackend, clock: ManualClock
) -> None:
    cold = submit(queue, model="cold", priority=Priority.LOW)  # LOW: its rank is 60 s behind
    clock.advance(40)
    hot = [submit(queue, model="hot") for _ in range(3)]
    assert ids(queue.lease("svc", "w1", max_jobs=1, models=["hot"], starve_after=50)) == [hot[0].id]
    assert ids(queue.lease("svc", "w1", max_jobs=2, models=["hot"], starve_after=30)) == [cold.id, hot[1].id]
    assert ids(queue.lease("svc", "w1", max_jobs=2, models=["hot"], starve_after=30)) == [hot[2].id]


def test_starved_jobs_go_first_by_rank_and_wait_counts_from_availability(
    queue: QueueBackend, clock: ManualClock
) -> None:
    retried = submit(queue, model="a")
    lease_one(queue, "w0", lease_seconds=100)
    clock.advance(1)
    old_normal = submit(queue, model="b")
    clock.advance(1)
    old_high = submit(queue, model="c", priority=Priority.HIGH)
    clock.advance(9)
    queue.fail(retried.id, "w0", "boom")  # available again after its back-off: its wait starts then
    clock.advance(21)
    fresh = submit(queue, model="hot")
    leased = queue.lease("svc", "w1", max_jobs=4, models=["hot"], starve_after=25)
    assert ids(leased) == [old_high.id, old_normal.id, fresh.id]
    assert ids(queue.lease("svc", "w1", max_jobs=4, models=["hot"], starve_after=25)) == [retried.id]


def test_affine_lease_respects_batch_limits_and_availability(queue: QueueBackend, clock: ManualClock) -> None:
    a = submit(queue, model="x")
    lease_one(queue, "w0")
    queue.settle("w0", [Outcome.handback(a.id, "crashed", batch_limit=1)])
    clock.advance(1)
    b = submit(queue, model="x")
    first = queue.lease("svc", "w1", max_jobs=4, models=["x"])
    assert ids(first) == [a.id] and first[0].leased_with == 1  # a job split off runs alone
    assert ids(queue.lease("svc", "w1", max_jobs=4, models=["x"])) == [b.id]
    assert queue.lease("svc", "w1", max_jobs=4, models=["x"], starve_after=0) == []
