"""A small typed HTTP client for Swell's `/v1` API (used by the command line, the tests and the benches).

An error answer becomes the SwellError of its status (401 AuthError, 404 NotFound, 409 Conflict, 413,
422 ValidationError, 429 QueueFull and 503 Unavailable, both with the `Retry-After` seconds), its
message and field taken from the JSON error body.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from swell.core.errors import (
    AuthError,
    Conflict,
    JobNotFound,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    SwellError,
    Unavailable,
    ValidationError,
)

_BY_STATUS: dict[int, type[SwellError]] = {
    401: AuthError,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
}


def read_api_key(data_dir: Path, explicit: str | None = None) -> str | None:
    """The key to send: an explicit one (flag or SWELL_API_KEY), else the one `swell up` stored."""
    if explicit:
        return explicit
    try:
        return (data_dir / "api_key").read_text().strip() or None
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class JobPage:
    """One page of `GET /v1/jobs`: newest first; `next_cursor` fetches the next page (None: the last)."""

    jobs: list[dict[str, Any]]
    next_cursor: str | None


class SwellClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def submit(self, service: str, input: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """POST /v1/jobs; `fields` are priority, idempotency_key, callback_url, wait, tenant, model."""
        body = {"service": service, "input": input, **{k: v for k, v in fields.items() if v is not None}}
        timeout = (fields.get("wait") or 0) + self._http.timeout.read if self._http.timeout.read else None
        return self._call("POST", "/v1/jobs", json=body, timeout=timeout)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._job_call("GET", f"/v1/jobs/{job_id}")

    def jobs(
        self,
        *,
        service: str | None = None,
        state: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        include_result: bool = False,
    ) -> list[dict[str, Any]]:
        """One page of jobs, newest first (`jobs_page` also gives the cursor of the next one)."""
        return self.jobs_page(
            service=service, state=state, limit=limit, cursor=cursor, include_result=include_result
        ).jobs

    def jobs_page(
        self,
        *,
        service: str | None = None,
        state: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        include_result: bool = False,
    ) -> JobPage:
        """GET /v1/jobs: results are left out unless `include_result`; `cursor` is a page's
        `next_cursor`."""
        params: dict[str, Any] = {"service": service, "state": state, "limit": limit, "cursor": cursor}
        if include_result:
            params["include"] = "result"
        body = self._call("GET", "/v1/jobs", params={k: v for k, v in params.items() if v is not None})
        if not isinstance(body, dict):
            return JobPage(list(body), None)
        return JobPage(list(body["jobs"]), body.get("next_cursor"))

    def iter_jobs(
        self,
        *,
        service: str | None = None,
        state: str | None = None,
        page_size: int = 100,
        include_result: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Every job that matches, newest first, page after page."""
        cursor: str | None = None
        while True:
            page = self.jobs_page(
                service=service, state=state, limit=page_size, cursor=cursor, include_result=include_result
            )
            yield from page.jobs
            if page.next_cursor is None or not page.jobs:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> dict[str, Any]:
        """DELETE /v1/jobs/{id}: cancel a queued job; a running one is asked to stop (202,
        `cancel_requested`); 409 once final."""
        return self._job_call("DELETE", f"/v1/jobs/{job_id}")

    def cancel_many(self, *, service: str) -> int:
        """DELETE /v1/jobs?service=: cancel every queued job of `service`; how many were."""
        body = self._call("DELETE", "/v1/jobs", params={"service": service})
        return int(body["cancelled"])

    def retry(self, job_id: str) -> dict[str, Any]:
        """POST /v1/jobs/{id}/retry: queue a dead, failed or cancelled job again (409 otherwise)."""
        return self._job_call("POST", f"/v1/jobs/{job_id}/retry")

    def services(self) -> list[dict[str, Any]]:
        """Each service with its queue depth, replicas and (with the brain on) its plan."""
        services: list[dict[str, Any]] = self._call("GET", "/v1/services")["services"]
        return services

    def health(self) -> dict[str, Any]:
        """GET /healthz: liveness (503 Unavailable while storage is failing)."""
        return self._call("GET", "/healthz")

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """GET /readyz: whether the gateway is ready (storage writable, replicas ready) and its body,
        whose reasons say why not."""
        try:
            response = self._http.get("/readyz")
        except httpx.TransportError as exc:
            raise SwellError(f"cannot reach Swell at {self._http.base_url}: {exc}") from None
        if response.status_code not in (200, 503):
            raise _error_from(response)
        return response.status_code == 200, _json_body(response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SwellClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SwellClient({str(self._http.base_url)!r})"

    def _job_call(self, method: str, path: str) -> dict[str, Any]:
        try:
            body: dict[str, Any] = self._call(method, path)
        except NotFound as exc:
            raise JobNotFound(exc.message, field=exc.field or "id") from None
        return body

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise SwellError(f"cannot reach Swell at {self._http.base_url}: {exc}") from None
        if response.status_code < 400:
            return response.json()
        raise _error_from(response)


def _error_from(response: httpx.Response) -> SwellError:
    body = _json_body(response)
    message = body.get("message") or body.get("detail") or response.text or response.reason_phrase
    text = f"{response.status_code}: {message}"
    field = body.get("field") if isinstance(body.get("field"), str) else None
    if response.status_code == 429:
        return QueueFull(text, retry_after=_retry_after(response))
    if response.status_code == 503:
        return Unavailable(text, retry_after=_retry_after(response), field=field)
    error_type = _BY_STATUS.get(response.status_code, SwellError)
    return error_type(text, field=field)


def _json_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(response: httpx.Response) -> float:
    """The `Retry-After` seconds (1 when absent or given as a date)."""
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0
