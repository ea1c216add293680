"""One error shape for every answer that is not a success: `{"error", "message", "field"?}`.

Every `SwellError` maps to its own status; request validation errors become 422 naming the field as
a dotted path inside the body, query or path (`priority`, `input.texts`, `limit`); malformed JSON
names `body`. An error that says when to come back (`QueueFull` 429, `Unavailable` 503) carries
`Retry-After`. What no handler expects becomes a 500 `InternalError` in the same shape
(`swell.gateway.limits.InternalErrors`), and so do the protocol's own refusals
(`swell.gateway.protocol`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from swell.core.errors import AuthError, QueueFull, SwellError, Unavailable, ValidationError

log = logging.getLogger("swell.gateway")

SOURCES = ("body", "query", "path", "header", "cookie")
HTTP_NAMES = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    413: "PayloadTooLarge",
    431: "HeadersTooLarge",
    503: "Unavailable",
}


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SwellError, swell_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, request_invalid)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]


async def swell_error(request: Request, error: SwellError) -> JSONResponse:
    if error.status_code >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, error)
    return JSONResponse(error.to_dict(), status_code=error.status_code, headers=error_headers(error))


def error_headers(error: SwellError) -> dict[str, str]:
    if isinstance(error, AuthError):
        return {"WWW-Authenticate": "Bearer"}
    return retry_headers(error)


def retry_headers(error: SwellError) -> dict[str, str]:
    """`Retry-After` (whole seconds, at least 1) for an error that says when to try again."""
    if isinstance(error, QueueFull | Unavailable):
        return {"Retry-After": str(max(1, math.ceil(error.retry_after)))}
    return {}


async def request_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = [_problem(item) for item in error.errors()]
    if problems and problems[0][0] == "body" and not _json_content(request.headers.get("content-type")):
        problems[0] = ("body", "send the body as JSON, with 'Content-Type: application/json'")
    field, message = problems[0] if problems else ("body", "invalid request")
    body = ValidationError(f"{field}: {message}", field=field).to_dict()
    body["errors"] = [{"field": f, "message": m} for f, m in problems]
    return JSONResponse(body, status_code=422)


async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    body = {"error": HTTP_NAMES.get(error.status_code, "HTTPError"), "message": str(error.detail)}
    if error.status_code == 400:  # the framework could not read the body (not UTF-8, too deep, ...)
        body["field"] = "body"
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


def _json_content(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _problem(item: dict[str, Any]) -> tuple[str, str]:
    if item.get("type") == "json_invalid":
        reason = (item.get("ctx") or {}).get("error", "")
        return "body", f"malformed JSON ({reason})" if reason else "malformed JSON"
    message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
    return field_name(item.get("loc", ())), message


def field_name(loc: Sequence[Any]) -> str:
    """`("body", "input", "texts", 0)` -> `input.texts.0`; the whole body -> `body`."""
    parts = [str(part) for part in loc]
    if len(parts) > 1 and parts[0] in SOURCES:
        parts = parts[1:]
    return ".".join(parts) or "body"


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def invalid_request(error: RequestValidationError, *, field_in_message: bool = False) -> ValidationError:
    """A request FastAPI could not validate, as Swell's `ValidationError` naming the first bad field
    (`body` for malformed JSON): what a door renders in its own shape. `field_in_message` starts
    the message with the field too (`messages.0.role: ...`), for shapes whose clients show only it."""
    problems = error.errors()
    first = problems[0] if problems else {}
    if first.get("type") == "json_invalid":
        return ValidationError("the body is not valid JSON", field="body")
    where = field_name(first.get("loc", ()))
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return ValidationError(f"{where}: {message}" if field_in_message else message, field=where)


def shaped_route(
    name: str, render: Callable[[SwellError], Response], *, field_in_message: bool = False
) -> type[APIRoute]:
    """A route class whose every refusal (auth, body validation, Swell's errors) `render` answers,
    so a door (OpenAI, A1111) speaks its protocol's error shape on each of its routes."""

    class ShapedRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            handler: Handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    return await handler(request)
                except SwellError as error:
                    if error.status_code >= 500:
                        log.error("%s %s failed: %s", request.method, request.url.path, error)
                    return render(error)
                except RequestValidationError as error:
                    return render(invalid_request(error, field_in_message=field_in_message))

            return guarded

    ShapedRoute.__name__ = ShapedRoute.__qualname__ = name
    return ShapedRoute
