"""API-key authentication for every keyed route: `Authorization: Bearer <key>`, or HTTP Basic.

Basic (`Authorization: Basic base64(user:key)`) is accepted alongside Bearer because the clients of
the AUTOMATIC1111 door (webuiapi, bots, the web UI's own `--api-auth`) only speak Basic: any user
name, the key as the password. Both are compared in constant time against the one configured key.

`caller(request)` names who is asking, for the per-caller state a door keeps (the A1111 door's
default checkpoint, its most recent job): a digest of the credential, with a Basic user name as part
of it, so two bots sharing the key under different user names do not see each other's progress.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Awaitable, Callable

from fastapi import Request, Security
from fastapi.security import HTTPBasic, HTTPBearer

from swell.core.errors import AuthError


class _BearerDoc(HTTPBearer):
    """The Bearer scheme in the OpenAPI document; the header itself is read by `credential`."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


class _BasicDoc(HTTPBasic):
    """The Basic scheme in the OpenAPI document (FastAPI's own would answer a malformed header
    with its own 401 before a door could answer in its shape)."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


_bearer = _BearerDoc(
    auto_error=False, scheme_name="HTTPBearer", description="The key `swell up` prints, or SWELL_API_KEY"
)
_basic = _BasicDoc(
    auto_error=False, scheme_name="HTTPBasic", description="Any user name, the API key as the password"
)
ANONYMOUS = "anonymous"  # the caller when authentication is off


def credential(authorization: str | None) -> tuple[str, bytes] | None:
    """(user, key) of an `Authorization` header: Bearer gives user "", Basic the user name; None
    for a missing, malformed or other-scheme header."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    value = value.strip()
    if not value:
        return None
    if scheme.lower() == "bearer":
        return "", value.encode("utf-8", "surrogateescape")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, key = decoded.partition(b":")
    if not colon:
        return None
    return user.decode("utf-8", "replace"), key


def bearer_key(api_key: str | None) -> Callable[..., Awaitable[None]]:
    """A dependency that accepts only the configured key, as a Bearer token or a Basic password
    (compared in constant time).

    With no key configured nothing is accepted: turning authentication off is an explicit choice.
    """
    expected = (api_key or "").encode()

    async def require_key(
        request: Request,
        _bearer_doc: None = Security(_bearer),
        _basic_doc: None = Security(_basic),
    ) -> None:
        given = credential(request.headers.get("authorization"))
        key = given[1] if given else b""
        if not expected or not hmac.compare_digest(key, expected):
            raise AuthError("a valid API key is needed: send 'Authorization: Bearer <key>'")

    return require_key


def caller(request: Request) -> str:
    """Who is asking (see the module docstring): a short digest of the credential, or ANONYMOUS."""
    given = credential(request.headers.get("authorization"))
    if given is None:
        return ANONYMOUS
    user, key = given
    return hashlib.sha256(user.encode() + b"\x00" + key).hexdigest()[:16]


__all__ = ["ANONYMOUS", "bearer_key", "caller", "credential"]
