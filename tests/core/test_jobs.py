"""The job lifecycle as a pure state machine: every legal event, every illegal one refused."""

from __future__ import annotations

import pytest

from swell.core.errors import IllegalTransition, LeaseLost
from swell.core.jobs import (
    TRANSITIONS,
    Event,
    Job,
    JobSpec,
    JobState,
    Priority,
    RetryPolicy,
    WebhookState,
    next_state,
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


def test_cancel_only_while_queued() -> None:
    assert job().cancel(now=101).state is JobState.CANCELLED
    with pytest.raises(IllegalTransition):
        job().lease("w", now=100, lease_seconds=10).cancel(now=101)


def test_aging_keeps_low_priority_from_starving() -> None:
    low = job(priority=Priority.LOW)
    fresh_high = Job.create(JobSpec(service="s", input={}, priority=Priority.HIGH), now=100.0 + 121)
    assert low.rank(POLICY) < fresh_high.rank(POLICY)
    same_time_high = Job.create(JobSpec(service="s", input={}, priority=Priority.HIGH), now=100.0)
    assert same_time_high.rank(POLICY) < job().rank(POLICY) < low.rank(POLICY)


def test_webhook_bookkeeping() -> None:
    j = job(callback_url="https://hooks.example.com/x")
    assert j.webhook_state is WebhookState.WAITING
    done = j.lease("w", now=100, lease_seconds=10).succeed({}, now=101)
    assert (done.webhook_state, done.webhook_next_at) == (WebhookState.PENDING, 101)
    retry = done.webhook_failed("HTTP 500", now=102, max_attempts=2, policy=POLICY)
    assert (retry.webhook_state, retry.webhook_attempts, retry.webhook_next_at) == (
        WebhookState.PENDING,
        1,
        103.0,
    )
    gave_up = retry.webhook_failed("HTTP 500", now=104, max_attempts=2, policy=POLICY)
    assert gave_up.webhook_state is WebhookState.FAILED
    assert done.webhook_delivered().webhook_state is WebhookState.DELIVERED
    assert done.to_public()["webhook"] == {"state": "pending", "attempts": 0, "error": None}
    assert "webhook" not in job().to_public()
