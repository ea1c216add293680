"""The job lifecycle as a pure state machine: every legal event, every illegal one refused."""

from __future__ import annotations

import dataclasses

import pytest

from swell.core.errors import IllegalTransition, LeaseLost
from swell.core.jobs import (
    TRANSITIONS,
    DeliveryStep,
    Event,
    Job,
    JobSpec,
    JobState,
    Priority,
    RetryPolicy,
    delivery_step,
    next_state,
    request_fingerprint,
    state_event_data,
)

POLICY = RetryPolicy(backoff_base=1.0, backoff_cap=30.0, aging_seconds=60.0)


def job(**spec: object) -> Job:
    return Job.create(JobSpec(service="s", input={"n": 1}, **spec), now=100.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("state", list(JobState))
@pytest.mark.parametrize("event", list(Event))
def test_transition_table_is_the_only_truth(state: JobState, event: Event) -> None:
    if (state, event) in TRANSITIONS:
        assert next_state(state, event) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(IllegalTransition, match=f"cannot {event.value} a job that is {state.value}"):
            next_state(state, event)


def test_success_path() -> None:
    leased = job().lease("w1", now=101.0, lease_seconds=30)
    assert (leased.state, leased.attempts, leased.lease_expires_at) == (JobState.LEASED, 1, 131.0)
    done = leased.succeed({"ok": True}, now=102.0)
    assert (done.state, done.result, done.finished_at, done.lease_owner) == (
        JobState.SUCCEEDED,
        {"ok": True},
        102.0,
        None,
    )
    with pytest.raises(IllegalTransition):
        done.succeed({"again": True}, now=103.0)
    with pytest.raises(IllegalTransition):
        done.cancel(now=103.0)


def test_retries_back_off_exponentially_then_bury_with_the_last_error() -> None:
    j = job(max_attempts=3)
    waits = []
    for attempt in range(1, 4):
        j = j.lease("w", now=j.available_at, lease_seconds=10)
        assert j.attempts == attempt
        failed_at = j.available_at + 1
        j = j.fail(f"boom {attempt}", now=failed_at, retryable=True, policy=POLICY)
        waits.append(j.available_at - failed_at if j.state is JobState.QUEUED else None)
    assert waits == [1.0, 2.0, None]
    assert (j.state, j.error, j.attempts) == (JobState.DEAD, "boom 3", 3)


def test_permanent_failure_is_not_retried() -> None:
    j = job().lease("w", now=100, lease_seconds=10).fail("bad input", now=101, retryable=False, policy=POLICY)
    assert (j.state, j.error, j.attempts) == (JobState.FAILED, "bad input", 1)


def test_expired_lease_requeues_and_names_the_owner() -> None:
    j = job().lease("w7", now=100, lease_seconds=10).expire(now=111, policy=POLICY)
    assert j.state is JobState.QUEUED and j.lease_owner is None
    assert "w7" in (j.error or "")


def test_release_hands_back_without_counting() -> None:
    j = job().lease("w", now=100, lease_seconds=10).release(now=105)
    assert (j.state, j.attempts, j.available_at) == (JobState.QUEUED, 0, 105)


def test_renew_needs_the_owner() -> None:
    leased = job().lease("w", now=100, lease_seconds=10)
    assert leased.renew("w", now=105, lease_seconds=10).lease_expires_at == 115
    with pytest.raises(LeaseLost):
        leased.renew("someone-else", now=105, lease_seconds=10)
    with pytest.raises(LeaseLost):
        job().renew("w", now=105, lease_seconds=10)


def test_a_queued_job_cancels_at_once_a_leased_one_on_request() -> None:
    assert job().cancel(now=101).state is JobState.CANCELLED
    leased = job().lease("w", now=100, lease_seconds=10)
    asked = leased.request_cancel()
    assert (asked.state, asked.cancel_requested, asked.lease_owner) == (JobState.LEASED, True, "w")
    assert asked.request_cancel() is asked
    stopped = asked.cancel(now=102)
    assert (stopped.state, stopped.finished_at, stopped.lease_owner) == (JobState.CANCELLED, 102, None)
    for final in (stopped, job().cancel(now=101)):
        with pytest.raises(IllegalTransition):
            final.request_cancel()
        with pytest.raises(IllegalTransition):
            final.cancel(now=103)
    with pytest.raises(IllegalTransition):
        job().request_cancel()


def test_a_requested_cancel_replaces_every_way_back_to_the_queue() -> None:
    asked = job(max_attempts=3).lease("w", now=100, lease_seconds=10).request_cancel()
    for after in (
        asked.fail("flaky", now=101, retryable=True, policy=POLICY),
        asked.release(now=101),
        asked.expire(now=111, policy=POLICY),
        asked.handback("batch hung", now=101, batch_limit=1, policy=POLICY),
        dataclasses.replace(asked, leased_with=4).expire(now=111, policy=POLICY),
    ):
        assert after.state is JobState.CANCELLED, after
    assert asked.succeed({"ok": 1}, now=101).state is JobState.SUCCEEDED, "a result that came first wins"
    assert asked.fail("bad", now=101, retryable=False, policy=POLICY).state is JobState.FAILED


def test_progress_belongs_to_one_delivery() -> None:
    leased = job().lease("w", now=100, lease_seconds=10)
    half = leased.with_progress(0.5, "step 10/20").with_progress(1.7, None)
    assert (half.progress, half.progress_message) == (1.0, "step 10/20")
    assert half.with_progress(-1, "x").progress == 0.0
    assert half.to_public()["progress"] == {"fraction": 1.0, "message": "step 10/20"}
    again = leased.with_progress(0.3, None).fail("flaky", now=101, retryable=True, policy=POLICY)
    assert again.lease("w", now=200, lease_seconds=10).progress is None
    assert leased.succeed({}, now=101).progress is None, "no progress reported, none made up"
    assert leased.with_progress(0.2, None).succeed({}, now=101).progress == 1.0
    redriven = leased.request_cancel().cancel(now=101).redrive(now=102)
    assert (redriven.cancel_requested, redriven.progress) == (False, None)


def test_state_event_data_says_what_changed() -> None:
    queued = job()
    leased = queued.lease("w", now=101, lease_seconds=10)
    assert state_event_data(None, queued) == {"state": "queued", "attempt": 0, "service": "s"}
    assert state_event_data(queued, leased) == {"state": "leased", "attempt": 1, "service": "s"}
    assert state_event_data(leased, leased.renew("w", now=102, lease_seconds=10)) is None
    retried = leased.fail("OSError: disk", now=103, retryable=True, policy=POLICY)
    assert state_event_data(leased, retried) == {
        "state": "queued",
        "attempt": 1,
        "service": "s",
        "error": "OSError: disk",
    }
    done = retried.lease("w", now=110, lease_seconds=10).succeed({}, now=112)
    assert state_event_data(retried, done) == {
        "state": "succeeded",
        "attempt": 2,
        "service": "s",
        "created_at": 100.0,
        "started_at": 110,
        "finished_at": 112,
    }
    redriven = leased.fail("bad", now=103, retryable=False, policy=POLICY).redrive(now=104)
    assert "error" not in (state_event_data(None, redriven) or {}), "an old error is not news"


def test_aging_keeps_low_priority_from_starving() -> None:
    low = job(priority=Priority.LOW)
    fresh_high = Job.create(JobSpec(service="s", input={}, priority=Priority.HIGH), now=100.0 + 121)
    assert low.rank(POLICY) < fresh_high.rank(POLICY)
    same_time_high = Job.create(JobSpec(service="s", input={}, priority=Priority.HIGH), now=100.0)
    assert same_time_high.rank(POLICY) < job().rank(POLICY) < low.rank(POLICY)


def test_a_job_turning_final_arms_its_deliveries_and_a_redrive_re_arms_them() -> None:
    """The outbox rows' own transitions are tested in tests/queue/test_outbox.py."""
    j = job(callback_url="https://hooks.example.com/x")
    leased = j.lease("w", now=100, lease_seconds=10)
    assert delivery_step(None, j) is None and delivery_step(j, leased) is None
    failed = leased.fail("bad", now=101, retryable=False, policy=POLICY)
    assert delivery_step(leased, failed) is DeliveryStep.ARM
    assert delivery_step(failed, failed.redrive(now=102)) is DeliveryStep.REARM
    assert "webhook" not in failed.to_public(), "the API reads it from the outbox"


# -- batches that fail as a whole ------------------------------------------------------------------


def batch_job(leased_with: int, **spec: object) -> Job:
    return job(**spec).lease("w", now=100, lease_seconds=10, batch=leased_with)


def test_a_lease_records_its_batch_size() -> None:
    assert batch_job(8).leased_with == 8
    assert job().lease("w", now=100, lease_seconds=10).leased_with == 1


def test_a_handback_that_splits_the_batch_does_not_count() -> None:
    back = batch_job(8, max_attempts=1).handback("TimeoutError: batch", now=105, batch_limit=4, policy=POLICY)
    assert (back.state, back.attempts, back.batch_limit, back.available_at) == (JobState.QUEUED, 0, 4, 105)
    assert (back.error, back.lease_owner, back.lease_expires_at) == ("TimeoutError: batch", None, None)


def test_a_handback_that_splits_nothing_is_the_jobs_own_failure() -> None:
    alone = job(max_attempts=2).lease("w", now=100, lease_seconds=10)
    retried = alone.handback("crashed", now=105, batch_limit=1, policy=POLICY)
    assert (retried.state, retried.attempts, retried.available_at) == (JobState.QUEUED, 1, 106.0)
    dead = retried.lease("w", now=106, lease_seconds=10).handback(
        "crashed", now=107, batch_limit=1, policy=POLICY
    )
    assert (dead.state, dead.error) == (JobState.DEAD, "crashed")
    not_smaller = batch_job(4).handback("slow", now=105, batch_limit=4, policy=POLICY)
    assert (not_smaller.attempts, not_smaller.batch_limit) == (1, 4)


def test_a_batch_limit_only_tightens() -> None:
    back = batch_job(8).handback("x", now=101, batch_limit=2, policy=POLICY)
    again = back.lease("w", now=102, lease_seconds=10, batch=2).handback(
        "x", now=103, batch_limit=8, policy=POLICY
    )
    assert again.batch_limit == 2
    assert batch_job(8).handback("x", now=101, batch_limit=0, policy=POLICY).batch_limit == 1


def test_repeated_handbacks_end_alone_then_count() -> None:
    """However a worker hands back, a job is handed back uncounted at most log2(batch) times."""
    j, uncounted = batch_job(32, max_attempts=1), 0
    while j.state is JobState.LEASED:
        j = j.handback("crash", now=101, batch_limit=j.leased_with // 2, policy=POLICY)
        if j.state is JobState.QUEUED:
            uncounted += 1
            j = j.lease("w", now=101, lease_seconds=10, batch=j.batch_limit or 1)
    assert (j.state, uncounted) == (JobState.DEAD, 5)


def test_an_expired_batch_lease_splits_without_counting() -> None:
    back = batch_job(5, max_attempts=1).expire(now=111, policy=POLICY)
    assert (back.state, back.attempts, back.batch_limit, back.available_at) == (JobState.QUEUED, 0, 2, 111)
    assert "batch of 5" in (back.error or "")
    alone = job(max_attempts=1).lease("w", now=100, lease_seconds=10).expire(now=111, policy=POLICY)
    assert alone.state is JobState.DEAD


# -- re-drive --------------------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["dead", "failed", "cancelled"])
def test_redrive_starts_a_finished_job_over(end: str) -> None:
    j = job(max_attempts=1, callback_url="https://hooks.example.com/x")
    ended = {
        "dead": lambda: (
            j.lease("w", now=100, lease_seconds=10, batch=3)
            .handback("x", now=101, batch_limit=1, policy=POLICY)
            .lease("w", now=101, lease_seconds=10)
            .fail("boom", now=102, retryable=True, policy=POLICY)
        ),
        "failed": lambda: j.lease("w", now=100, lease_seconds=10).fail(
            "bad", now=102, retryable=False, policy=POLICY
        ),
        "cancelled": lambda: j.cancel(now=102),
    }[end]()
    assert ended.state.value == end
    again = ended.redrive(now=200)
    assert (again.state, again.attempts, again.available_at, again.finished_at) == (
        JobState.QUEUED,
        0,
        200,
        None,
    )
    assert (again.batch_limit, again.result, again.error) == (None, None, ended.error)
    assert delivery_step(ended, again) is DeliveryStep.REARM


def test_redrive_refuses_live_and_succeeded_jobs() -> None:
    for live in (job(), job().lease("w", now=100, lease_seconds=10)):
        with pytest.raises(IllegalTransition, match="cannot redrive"):
            live.redrive(now=101)
    with pytest.raises(IllegalTransition):
        job().lease("w", now=100, lease_seconds=10).succeed({}, now=101).redrive(now=102)


# -- idempotency -----------------------------------------------------------------------------------


def test_request_fingerprint_is_canonical() -> None:
    a = request_fingerprint({"x": 1, "y": [1, 2.5, "ü"]}, "m")
    assert a == request_fingerprint({"y": [1, 2.5, "ü"], "x": 1}, "m")
    assert a != request_fingerprint({"x": 1, "y": [1, 2.5, "ü"]}, None)
    assert a != request_fingerprint({"x": 1, "y": [2.5, 1, "ü"]}, "m")
    assert len(a) == 64


def test_only_a_keyed_job_stores_its_fingerprint_and_old_jobs_still_compare() -> None:
    keyed = job(idempotency_key="k", model="m")
    assert keyed.fingerprint == request_fingerprint({"n": 1}, "m") and job().fingerprint is None
    same = JobSpec(service="s", input={"n": 1}, idempotency_key="k", model="m")
    other = JobSpec(service="s", input={"n": 2}, idempotency_key="k", model="m")
    assert keyed.same_request(same) and not keyed.same_request(other)
    legacy = dataclasses.replace(keyed, fingerprint=None)  # stored before fingerprints were kept
    assert legacy.same_request(same) and not legacy.same_request(other)
