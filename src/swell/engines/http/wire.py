"""What both modes share on the wire: a server's error answers as Swell's errors.

An answer that says the job itself is wrong (400, 404, 413, 422) is a ValidationError, which fails
the job for good; one that says the server cannot serve now (429, 503, or no connection at all) is
`Unavailable`, and any other failure an EngineError: both are retried on another delivery.
"""

from __future__ import annotations

from typing import Any

import httpx

from swell.core.errors import EngineError, Unavailable, ValidationError

BAD_JOB = frozenset({400, 404, 413, 422})
BUSY = frozenset({429, 503})
QUOTE = 500  # characters of a server's error body quoted in the error


def server_message(response: httpx.Response) -> str:
    """The server's own words: `error.message`, `detail`, or its body's start."""
    try:
        body: Any = response.json()
    except ValueError:
        return " ".join(response.text.split())[:QUOTE]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:QUOTE]
        for key in ("detail", "message", "error", "errors"):
            if body.get(key):
                return str(body[key])[:QUOTE]
    return str(body)[:QUOTE]


def raise_for_status(response: httpx.Response) -> None:
    """Nothing for a 2xx answer; otherwise the Swell error it maps to (see the module docstring)."""
    if response.is_success:
        return
    path = response.request.url.path
    what = f"the server answered {response.status_code} to {path}: {server_message(response)}"
    if response.status_code in BAD_JOB:
        raise ValidationError(what, field="input")
    if response.status_code in BUSY:
        raise Unavailable(what, retry_after=retry_after(response))
    raise EngineError(what)


def retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def transport_error(exc: httpx.HTTPError, url: str) -> Exception:
    """A request that got no answer: a timeout is an EngineError, anything else (refused, reset,
    the server gone mid-answer) `Unavailable`."""
    if isinstance(exc, httpx.TimeoutException):
        return EngineError(f"{url}: no answer in time ({type(exc).__name__})")
    return Unavailable(f"{url}: the server cannot be reached or went away ({type(exc).__name__}: {exc})")
