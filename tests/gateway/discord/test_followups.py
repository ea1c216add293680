"""`DiscordChannel` against the stand-in Discord API: the edits it makes (multipart with the image,
text, failures, expiry, progress) and how it meets rate limits."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from swell.core.clock import ManualClock
from swell.core.jobs import Delivery, DeliverySpec, Job, JobSpec, JobState
from swell.engines.results import LocalResultStore
from swell.gateway.discord.api import DiscordAPI
from swell.gateway.discord.followups import DiscordChannel
from swell.gateway.outbox import DeliveryFailed
from tests.gateway.discord.api import StandIn, discord_api
from tests.gateway.discord.conftest import APP_ID
from tests.gateway.discord.engine import tiny_png

pytestmark = pytest.mark.anyio


@pytest.fixture
def api() -> Iterator[StandIn]:
    with discord_api() as stand_in:
        yield stand_in


@dataclasses.dataclass
class Setup:
    channel: DiscordChannel
    results: LocalResultStore
    clock: ManualClock
    answered: list[str]


@pytest.fixture
async def setup(api: StandIn, tmp_path: Path) -> AsyncIterator[Setup]:
    clock = ManualClock(1000.0)
    answered: list[str] = []
    results = LocalResultStore(tmp_path)
    channel = DiscordChannel(
        DiscordAPI(api.api_base, clock=clock.now),
        results,
        progress_every=3.0,
        on_answered=answered.append,
        clock=clock.now,
    )
    yield Setup(channel, results, clock, answered)
    await channel.aclose()


def job_and_row(token: str, **changes: Any) -> tuple[Job, Delivery]:
    target = {
        "application_id": APP_ID,
        "token": token,
        "channel_id": "1",
        "user_id": "2",
        "interaction_id": "3",
    }
    spec = JobSpec(service="draw", input={"prompt": "a cat"}, deliveries=(DeliverySpec("discord", target),))
    job = dataclasses.replace(Job.create(spec, time.time()), **changes)
    return job, Delivery.create(job.id, spec.deliveries[0], time.time())


async def test_an_image_result_goes_as_files_with_attachments(api: StandIn, setup: Setup) -> None:
    job, row = job_and_row(
        "t-image", state=JobState.SUCCEEDED, result={"images": [{"file": "0.png"}, {"file": "1.png"}]}
    )
    pngs = [tiny_png(shade=10), tiny_png(shade=20)]
    for n, data in enumerate(pngs):
        setup.results.put(job.id, f"{n}.png", data, "image/png")
    await setup.channel.deliver(row, job)
    assert api.problems == []
    (edit,) = api.edits_for("t-image")
    assert edit.multipart and edit.application_id == APP_ID
    assert edit.files == {0: ("0.png", pngs[0]), 1: ("1.png", pngs[1])}
    assert edit.payload["attachments"] == [{"id": 0, "filename": "0.png"}, {"id": 1, "filename": "1.png"}]
    assert edit.payload["content"] == "**a cat**" and edit.payload["allowed_mentions"] == {"parse": []}
    assert setup.answered == [job.id]


async def test_a_missing_image_is_said_and_the_rest_sent(api: StandIn, setup: Setup) -> None:
    job, row = job_and_row(
        "t-gone", state=JobState.SUCCEEDED, result={"images": [{"file": "0.png"}, {"file": "9.png"}]}
    )
    setup.results.put(job.id, "0.png", tiny_png(), "image/png")
    await setup.channel.deliver(row, job)
    (edit,) = api.edits_for("t-gone")
    assert list(edit.files) == [0] and "9.png is missing" in edit.payload["content"]


async def test_text_goes_as_content_and_long_text_as_a_file(api: StandIn, setup: Setup) -> None:
    short = {"choices": [{"index": 0, "text": "hello there", "finish_reason": "stop"}]}
    job, row = job_and_row("t-short", state=JobState.SUCCEEDED, result=short)
    await setup.channel.deliver(row, job)
    edit = api.last("t-short")
    assert edit is not None and not edit.multipart and edit.payload["content"] == "hello there"

    text = "word " * 1000
    job, row = job_and_row("t-long", state=JobState.SUCCEEDED, result={"text": text})
    await setup.channel.deliver(row, job)
    edit = api.last("t-long")
    assert edit is not None and edit.files[0] == ("result.txt", text.encode())
    assert len(edit.payload["content"]) <= 2000 and "result.txt" in edit.payload["content"]


async def test_a_failed_or_cancelled_job_is_told(api: StandIn, setup: Setup) -> None:
    job, row = job_and_row("t-fail", state=JobState.FAILED, error="ValueError: cannot draw")
    await setup.channel.deliver(row, job)
    edit = api.last("t-fail")
    assert edit is not None and "failed: ValueError: cannot draw" in edit.payload["content"]
    job, row = job_and_row("t-cancel", state=JobState.CANCELLED)
    await setup.channel.deliver(row, job)
    edit = api.last("t-cancel")
    assert edit is not None and "cancelled" in edit.payload["content"]


async def test_a_429_is_a_retry_after_and_the_follow_up_is_not_lost(api: StandIn, setup: Setup) -> None:
    api.rate_limit_first, api.retry_after = 2, 0.4
    job, row = job_and_row("t-429", state=JobState.SUCCEEDED, result={"text": "done"})
    for _ in range(2):
        with pytest.raises(DeliveryFailed) as caught:
            await setup.channel.deliver(row, job)
        assert caught.value.retry_after == pytest.approx(0.4) and not caught.value.permanent
        setup.clock.advance(0.5)  # the dispatcher waits retry_after before the next try
    await setup.channel.deliver(row, job)
    assert [e.payload["content"] for e in api.edits_for("t-429")] == ["done"]
    assert api.limited == 2 and setup.answered == [job.id]


async def test_a_global_429_closes_every_route(api: StandIn, setup: Setup) -> None:
    api.rate_limit_first, api.retry_after, api.global_limit = 1, 5.0, True
    job, row = job_and_row("t-global", state=JobState.SUCCEEDED, result={"text": "x"})
    with pytest.raises(DeliveryFailed):
        await setup.channel.deliver(row, job)
    other, other_row = job_and_row("t-other", state=JobState.SUCCEEDED, result={"text": "y"})
    with pytest.raises(DeliveryFailed) as caught:
        await setup.channel.deliver(other_row, other)  # refused here, before Discord is asked
    assert 4.0 < (caught.value.retry_after or 0) <= 5.0 and api.limited == 1
    setup.clock.advance(5.1)
    await setup.channel.deliver(other_row, other)
    assert len(api.edits_for("t-other")) == 1


async def test_an_emptied_bucket_is_waited_out_without_a_429(api: StandIn, setup: Setup) -> None:
    api.bucket_size, api.bucket_seconds = 2, 30.0
    job, row = job_and_row("t-bucket", state=JobState.SUCCEEDED, result={"text": "x"})
    await setup.channel.deliver(row, job)
    await setup.channel.deliver(row, job)  # the bucket is now empty: Discord says remaining 0
    with pytest.raises(DeliveryFailed) as caught:
        await setup.channel.deliver(row, job)
    assert 25 < (caught.value.retry_after or 0) <= 30
    assert api.violations == 0 and len(api.edits_for("t-bucket")) == 2


async def test_an_expired_token_is_a_permanent_failure(api: StandIn, setup: Setup) -> None:
    api.expired_tokens.add("t-dead")
    job, row = job_and_row("t-dead", state=JobState.SUCCEEDED, result={"text": "x"})
    with pytest.raises(DeliveryFailed) as caught:
        await setup.channel.deliver(row, job)
    assert caught.value.permanent and "Unknown Webhook" in caught.value.error
    assert "t-dead" not in caught.value.error  # the token is a credential: never in an error


async def test_a_transport_failure_is_retryable(setup: Setup) -> None:
    channel = DiscordChannel(DiscordAPI("http://127.0.0.1:9/api/v10", timeout=2), setup.results)
    job, row = job_and_row("t-down", state=JobState.SUCCEEDED, result={"text": "x"})
    with pytest.raises(DeliveryFailed) as caught:
        await channel.deliver(row, job)
    assert not caught.value.permanent and caught.value.retry_after is None
    await channel.aclose()


async def test_progress_edits_are_spaced_and_skip_repeats(api: StandIn, setup: Setup) -> None:
    job, row = job_and_row("t-progress", state=JobState.LEASED, progress=0.25)
    for _ in range(5):
        await setup.channel.progress(row, job)
    setup.clock.advance(3.0)
    await setup.channel.progress(row, job)  # time enough, but nothing new to show
    await setup.channel.progress(row, dataclasses.replace(job, progress=0.5))
    assert [e.payload["content"] for e in api.edits_for("t-progress")] == [
        "⏳ Working… 25 %",
        "⏳ Working… 50 %",
    ]


async def test_progress_is_dropped_not_raised_when_rate_limited(api: StandIn, setup: Setup) -> None:
    api.rate_limit_first = 1
    job, row = job_and_row("t-p429", state=JobState.LEASED, progress=0.1)
    await setup.channel.progress(row, job)  # a 429: logged and dropped
    setup.clock.advance(0.1)
    await setup.channel.progress(row, dataclasses.replace(job, progress=0.9))  # too soon: skipped
    assert api.edits_for("t-p429") == [] and api.limited == 1


async def test_expiry_tells_the_user(api: StandIn, setup: Setup) -> None:
    job, row = job_and_row("t-expire", state=JobState.QUEUED)
    await setup.channel.expire(row, job)
    edit = api.last("t-expire")
    assert edit is not None and f"Job `{job.id}` is still queued" in edit.payload["content"]
    assert setup.answered == [job.id]


async def test_concurrent_deliveries_share_one_pool(api: StandIn, setup: Setup) -> None:
    pairs = [job_and_row(f"t-many-{i}", state=JobState.SUCCEEDED, result={"text": str(i)}) for i in range(20)]
    await asyncio.gather(*(setup.channel.deliver(row, job) for job, row in pairs))
    assert sum(len(api.edits_for(f"t-many-{i}")) for i in range(20)) == 20 and api.problems == []
