"""`POST /discord/interactions`: the endpoint a Discord application's Interactions URL points at.

    request  ──verify (401)──▶ PING? PONG
                              └▶ command ─▶ per-user rate and concurrency ─▶ submit (durable) ─▶ type 5
                                   any refusal: an ephemeral type 4 naming why

The signature, the timestamp and the replay check come first, each failure the same 401
(swell.gateway.discord.signature). A command is mapped to a service and an input
(swell.gateway.discord.mapping), then submitted through the gateway's one `Submissions` exactly as
the `/v1` API submits (validation, the request filter, admission, group commit), with the
interaction id as the idempotency key (a repeat of the interaction cannot make a second job) and a
`discord` delivery whose target is the interaction's application id and token, expiring with the
token 15 minutes after it arrived. The deferred answer (type 5) goes out once the job is durable;
the outbox's dispatcher then edits it through `DiscordChannel` (swell.gateway.discord.followups).

Refusals are ephemeral messages (flag 64, only the user sees them) rather than HTTP errors, since
Discord shows a failed request only as "The application did not respond": an unknown command, the
user's rate or concurrency limit, an option the engine refused (named as the user typed it), a
request the filter refused, and a busy service (429/503, with when to try again).

The route carries no API key: Discord cannot send one; the signature is its authentication.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from swell.core.clock import Clock, SystemClock
from swell.core.config import Settings, SwellConfig
from swell.core.errors import NotFound, QueueFull, SwellError, Unavailable, ValidationError
from swell.core.jobs import DeliverySpec
from swell.engines.results import ResultStore, open_result_store
from swell.gateway.discord.api import DiscordAPI
from swell.gateway.discord.config import DiscordConfig
from swell.gateway.discord.followups import CHANNEL, DiscordChannel
from swell.gateway.discord.limits import UserLimits
from swell.gateway.discord.mapping import (
    APPLICATION_COMMAND,
    PING,
    Interaction,
    deferred,
    ephemeral,
    option_for,
    parse_interaction,
    pong,
    to_submission,
)
from swell.gateway.discord.signature import BadSignature, ReplayGuard, Verifier
from swell.gateway.storage import AsyncQueue
from swell.gateway.submissions import Submissions

log = logging.getLogger("swell.gateway.discord")

TOKEN_SECONDS = 15 * 60.0  # an interaction token edits its response for this long
PATH = "/discord/interactions"


class DiscordDoor:
    """The interactions endpoint and the follow-up channel it feeds (see the module docstring)."""

    def __init__(
        self,
        config: DiscordConfig,
        submissions: Submissions,
        storage: AsyncQueue,
        results: ResultStore,
        *,
        clock: Clock = SystemClock(),
        api: DiscordAPI | None = None,
    ) -> None:
        config.check_services(set(submissions.services))
        self.config = config
        self.submissions = submissions
        self.storage = storage
        self.clock = clock
        self.verifier = Verifier(config.public_key, max_skew=config.max_timestamp_skew_seconds)
        # a timestamp may be up to the skew ahead as well as behind: ids are kept for both
        self.replays = ReplayGuard(2 * config.max_timestamp_skew_seconds)
        self.limits = UserLimits(config.per_user_rate, config.per_user_concurrency)
        self.api = api or DiscordAPI(config.api_base, timeout=config.request_timeout_seconds)
        self.channel = DiscordChannel(
            self.api, results, progress_every=config.progress_every_seconds, on_answered=self.limits.release
        )

    def router(self) -> APIRouter:
        router = APIRouter(tags=["discord"])
        router.add_api_route(PATH, self.interactions, methods=["POST"], responses=_RESPONSES)
        return router

    async def interactions(self, request: Request) -> JSONResponse:
        """Answer one interaction: PONG, a deferred response, or an ephemeral refusal (401 unsigned)."""
        body = await request.body()
        now = self.clock.now()
        headers = request.headers
        try:
            self.verifier.check(
                headers.get("x-signature-ed25519"), headers.get("x-signature-timestamp"), body, now
            )
        except BadSignature as exc:
            return _unauthorized(exc)
        interaction = parse_interaction(_json(body))
        if not self.replays.first_time(interaction.id, now):
            return _unauthorized(BadSignature("interaction already received"))
        if interaction.type == PING:
            return JSONResponse(pong())
        if interaction.type != APPLICATION_COMMAND:
            return JSONResponse(ephemeral("This kind of interaction is not supported."))
        return JSONResponse(await self.command(interaction, now))

    async def command(self, interaction: Interaction, now: float) -> dict[str, Any]:
        """A slash command: the deferred response once its job is durable, or why it was refused."""
        user, reservation = interaction.user_id, f"interaction:{interaction.id}"
        try:
            submission = to_submission(interaction, self.config)
            await self._admit(user, now)
            self.limits.start(user, now)
            self.limits.hold(user, reservation, until=now + TOKEN_SECONDS)  # a slot while it is stored
            job, _ = await self.submissions.submit(
                submission.service,
                submission.input,
                model=submission.model,
                idempotency_key=f"discord:{interaction.id}",
                tenant=f"discord:{user}",
                door="discord",
                deliveries=[DeliverySpec(CHANNEL, _target(interaction), expires_at=now + TOKEN_SECONDS)],
            )
        except SwellError as exc:
            return ephemeral(self._refusal(interaction, exc))
        finally:
            self.limits.release(reservation)
        if not job.state.final:
            self.limits.hold(user, job.id, until=now + TOKEN_SECONDS)
        return deferred()

    async def _admit(self, user: str, now: float) -> None:
        """Refuse a user over their rate or with `per_user_concurrency` jobs unanswered (held jobs
        already final are let go first: their follow-up may still be on its way)."""
        wait = self.limits.rate_wait(user, now)
        if wait > 0:
            raise Limited(f"You're going too fast: try again in {math.ceil(wait)} s.")
        held = self.limits.held(user, now)
        if len(held) < self.limits.concurrency:
            return
        for job_id in held:
            if job_id.startswith("interaction:"):
                continue  # a command of this user still being stored
            if await self._final(job_id):
                self.limits.release(job_id)
        if len(self.limits.held(user, now)) >= self.limits.concurrency:
            raise Limited(f"You already have {len(held)} jobs running: wait for one to finish.")

    async def _final(self, job_id: str) -> bool:
        try:
            return (await self.storage.get(job_id)).state.final
        except NotFound:
            return True  # gone: it holds nothing

    def _refusal(self, interaction: Interaction, error: SwellError) -> str:
        """What the user is told (ephemeral) for a refused command."""
        if isinstance(error, QueueFull | Unavailable):
            return f"Swell is busy right now: try again in {max(1, math.ceil(error.retry_after))} s."
        if not isinstance(error, Limited | ValidationError):
            log.info("a /%s command was refused: %s", interaction.command, error)
        option = option_for(self.config.commands.get(interaction.command or ""), error.field)
        if option is not None and error.field is not None and error.field != option:
            return named(error.message, error.field, option)  # an engine's or the filter's words
        return error.message or type(error).__name__

    async def aclose(self) -> None:
        await self.channel.aclose()

    def __repr__(self) -> str:
        return f"DiscordDoor(application={self.config.application_id}, {self.replays!r}, {self.limits!r})"


def discord_door(
    config: SwellConfig,
    settings: Settings,
    submissions: Submissions,
    storage: AsyncQueue,
    clock: Clock = SystemClock(),
) -> DiscordDoor | None:
    """The door `config.discord` describes, reading result files where the gateway's file route
    does (`cluster.results_url`, else the data dir), on the clock the outbox dispatcher keeps (a
    token's expiry is set by one and read by the other); None when no `discord:` is configured."""
    if config.discord is None:
        return None
    results = open_result_store(config.cluster.results_url, settings.data_dir)
    return DiscordDoor(config.discord, submissions, storage, results, clock=clock)


class Limited(SwellError):
    """A user over the door's per-user rate or concurrency cap (answered in Discord, not HTTP)."""

    status_code = 429


def named(message: str, field: str, option: str) -> str:
    """`message` about input field `field` told in the user's terms: the option they typed."""
    if field in message:
        return message.replace(field, f"option `{option}`", 1)
    return f"Option `{option}`: {message}"


def _target(interaction: Interaction) -> dict[str, Any]:
    return {
        "application_id": interaction.application_id,
        "token": interaction.token,
        "channel_id": interaction.channel_id,
        "user_id": interaction.user_id,
        "interaction_id": interaction.id,
    }


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise ValidationError("the body is not JSON", field="body") from None


def _unauthorized(error: BadSignature) -> JSONResponse:
    return JSONResponse(error.to_dict(), status_code=401)


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "PONG (type 1), deferred (type 5) or an ephemeral refusal (type 4, flags 64)"},
    401: {"description": "Not signed by the application's key, a stale timestamp, or a replayed id"},
}

__all__ = ["PATH", "TOKEN_SECONDS", "DiscordDoor", "Limited", "discord_door"]
