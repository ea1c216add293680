"""Bearer-key authentication for the `/v1` routes."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from swell.core.errors import AuthError

_scheme = HTTPBearer(auto_error=False, description="The key `swell up` prints, or SWELL_API_KEY")


def bearer_key(api_key: str | None) -> Callable[..., Awaitable[None]]:
    """A dependency that accepts only `Authorization: Bearer <api_key>` (compared in constant time).

    With no key configured nothing is accepted: turning authentication off is an explicit choice.
    """
    expected = (api_key or "").encode()

    async def require_key(credentials: HTTPAuthorizationCredentials | None = Security(_scheme)) -> None:
        given = credentials.credentials.encode() if credentials else b""
        if not expected or not hmac.compare_digest(given, expected):
            raise AuthError("a valid API key is needed: send 'Authorization: Bearer <key>'")

    return require_key
