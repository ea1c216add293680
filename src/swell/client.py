"""A small typed HTTP client for Swell's `/v1` API (used by the command line, the tests and the benches)."""

from __future__ import annotations

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
        try:
            return self._call("GET", f"/v1/jobs/{job_id}")
        except NotFound as exc:
            raise JobNotFound(exc.message, field="id") from None

    def jobs(
        self, *, service: str | None = None, state: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        params = {
            k: v for k, v in {"service": service, "state": state, "limit": limit}.items() if v is not None
        }
        body = self._call("GET", "/v1/jobs", params=params)
        return list(body["jobs"] if isinstance(body, dict) else body)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/jobs/{job_id}")

    def services(self) -> list[dict[str, Any]]:
        """Each service with its queue depth, replicas and (with the brain on) its plan."""
        services: list[dict[str, Any]] = self._call("GET", "/v1/services")["services"]
        return services

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SwellClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SwellClient({str(self._http.base_url)!r})"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise SwellError(f"cannot reach Swell at {self._http.base_url}: {exc}") from None
        if response.status_code < 400:
            return response.json()
        raise _error_from(response)


def _error_from(response: httpx.Response) -> SwellError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = body.get("message") or body.get("detail") or response.text or response.reason_phrase
    field = body.get("field")
    if response.status_code == 429:
        return QueueFull(str(message), retry_after=float(response.headers.get("Retry-After", "1")))
    error_type = _BY_STATUS.get(response.status_code, SwellError)
    error = error_type(f"{response.status_code}: {message}", field=field)
    return error
