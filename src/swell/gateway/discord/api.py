"""The few calls the door makes to Discord's HTTP API, and its rate limits.

    PATCH /webhooks/{application_id}/{token}/messages/@original   edit the deferred response (no bot
                                                                  token: the interaction's own)
    PUT   /applications/{application_id}/commands                 register the slash commands (bot)
    PUT   /applications/{application_id}/guilds/{guild}/commands  ... in one guild, at once

Rate limits. Discord answers each call with `X-RateLimit-Remaining` and `X-RateLimit-Reset-After`
(seconds); when nothing remains the route is closed until then, and the next call on it is refused
here (`RateLimited`, nothing sent) instead of earning a 429. A 429 carries `{"retry_after": seconds,
"global": bool}` (and `Retry-After`): the route, or with `global` every route, is closed for that
long, and the caller is told when to try again. The state is per route (method and path, so per
interaction token), shared by every call made through one `DiscordAPI`.

Errors are translated here into `DiscordError` (`status` the HTTP status, None for a transport
failure; `retryable` for 5xx and transport failures) and its `RateLimited` (with `retry_after`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from swell.core.errors import SwellError

Clock = Callable[[], float]
Attachment = tuple[str, bytes, str]  # file name, bytes, content type
USER_AGENT = "DiscordBot (https://github.com/swell, 0.1)"  # Discord asks bots for this form
# Connections kept to Discord. httpx looks at every pooled connection for each request (a poll per
# socket) on the gateway's event loop, and the dispatcher runs up to 32 tries at once: 8 connections
# carry 50 follow-ups/s with fewer sockets to look at (a diagnostic run: the httpx share of the loop's
# time fell by about a sixth; see docs/benchmarks.md, "Discord door").
MAX_CONNECTIONS = 8


class DiscordError(SwellError):
    """A call to Discord's API failed: `status` (None: no answer), `retryable` for 5xx and transport
    failures."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500


class RateLimited(DiscordError):
    """Discord's rate limit closes the route for `retry_after` seconds (`global_`: every route)."""

    def __init__(self, message: str, *, retry_after: float, global_: bool = False, status: int | None = 429):
        super().__init__(message, status=status)
        self.retry_after = retry_after
        self.global_ = global_

    @property
    def retryable(self) -> bool:
        return True


@dataclass(slots=True)
class RateLimits:
    """When each route (and every route, after a global 429) opens again; pure, times passed in."""

    routes: dict[str, float]
    global_until: float = 0.0

    def wait(self, route: str, now: float) -> float:
        """Seconds until `route` may be called (0: now)."""
        return max(0.0, self.global_until - now, self.routes.get(route, 0.0) - now)

    def observe(self, route: str, headers: Mapping[str, str], now: float) -> None:
        """Close `route` until its reset when Discord says nothing of it remains."""
        remaining, reset_after = headers.get("x-ratelimit-remaining"), headers.get("x-ratelimit-reset-after")
        if remaining == "0" and reset_after is not None:
            self.routes[route] = now + _seconds(reset_after, 1.0)
        elif route in self.routes and self.routes[route] <= now:
            del self.routes[route]  # bounded: an open route is forgotten

    def limited(self, route: str, retry_after: float, global_: bool, now: float) -> None:
        if global_:
            self.global_until = max(self.global_until, now + retry_after)
        else:
            self.routes[route] = max(self.routes.get(route, 0.0), now + retry_after)


def _seconds(value: Any, default: float) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return default
    return seconds if 0 <= seconds < 86_400 else default


class DiscordAPI:
    """Discord's HTTP API at `base` (see the module docstring)."""

    def __init__(
        self,
        base: str,
        *,
        timeout: float = 10.0,
        bot_token: str | None = None,
        clock: Clock = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base = base.rstrip("/")
        self.clock = clock
        self.limits = RateLimits(routes={})
        self.timeout = timeout
        self.transport = transport
        self._headers = {"User-Agent": USER_AGENT}
        if bot_token:
            self._headers["Authorization"] = f"Bot {bot_token}"
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        """The connection pool, opened on first use (in the loop that uses it) and again after
        `aclose`, so a dispatcher that stops and starts again gets a fresh one."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                headers=self._headers,
                transport=self.transport,
                follow_redirects=False,
                limits=httpx.Limits(
                    max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
                ),
            )
        return self._client

    async def edit_original(
        self,
        application_id: str,
        token: str,
        payload: dict[str, Any],
        files: Sequence[Attachment] = (),
    ) -> None:
        """Replace the interaction's original response with `payload`, attaching `files` as
        `files[0..n]` (multipart with `payload_json`) when there are any."""
        path = f"/webhooks/{application_id}/{token}/messages/@original"
        if not files:
            await self.call("PATCH", path, json=payload)
            return
        payload = {**payload, "attachments": [{"id": i, "filename": f[0]} for i, f in enumerate(files)]}
        parts = [(f"files[{i}]", (name, data, kind)) for i, (name, data, kind) in enumerate(files)]
        await self.call("PATCH", path, data={"payload_json": json.dumps(payload)}, files=parts)

    async def put_commands(
        self, application_id: str, commands: list[dict[str, Any]], guild: str | None = None
    ) -> list[dict[str, Any]]:
        """Overwrite the application's commands (globally, or in `guild` only) with `commands`."""
        path = f"/applications/{application_id}" + (f"/guilds/{guild}" if guild else "") + "/commands"
        response = await self.call("PUT", path, json=commands)
        answer = response.json()
        return answer if isinstance(answer, list) else []

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call, refused at once while its route is closed; errors as `DiscordError`."""
        route = f"{method} {path}"
        wait = self.limits.wait(route, self.clock())
        if wait > 0:
            raise RateLimited(f"{method} {_redacted(path)} is rate limited", retry_after=wait, status=None)
        try:
            response = await self.client().request(method, self.base + path, **kwargs)
        except httpx.HTTPError as exc:
            raise DiscordError(f"{method} {_redacted(path)}: {type(exc).__name__}: {exc}") from None
        self.limits.observe(route, response.headers, self.clock())
        if response.status_code == 429:
            raise self._rate_limited(route, response)
        if response.status_code >= 400:
            raise DiscordError(_failure(method, path, response), status=response.status_code)
        return response

    def _rate_limited(self, route: str, response: httpx.Response) -> RateLimited:
        body = _json(response)
        retry_after = _seconds(body.get("retry_after", response.headers.get("retry-after")), 1.0)
        global_ = bool(body.get("global")) or response.headers.get("x-ratelimit-global") == "true"
        self.limits.limited(route, retry_after, global_, self.clock())
        scope = "globally " if global_ else ""
        return RateLimited(
            f"Discord rate limited {scope}for {retry_after:g} s", retry_after=retry_after, global_=global_
        )

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def __repr__(self) -> str:
        return f"DiscordAPI({self.base!r}, closed_routes={len(self.limits.routes)})"


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _failure(method: str, path: str, response: httpx.Response) -> str:
    body = _json(response)
    detail = body.get("message") or response.text[:200]
    code = f" (code {body['code']})" if "code" in body else ""
    return f"{method} {_redacted(path)} answered {response.status_code}: {detail}{code}"


def _redacted(path: str) -> str:
    """The path without an interaction token (a credential for 15 minutes): never in a log line."""
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == "webhooks":
        parts[3] = "***"
    return "/".join(parts)


__all__ = ["Attachment", "DiscordAPI", "DiscordError", "RateLimited", "RateLimits"]
