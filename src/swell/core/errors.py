"""Swell's one exception tree. Foreign errors are translated at the boundary.

SwellError                      (status 500)
├── ConfigError                 a bad configuration key or file (names both)
├── ValidationError             bad input; names the offending field (422)
│   └── PayloadTooLarge         a request body over the configured limit (413)
├── AuthError                   missing or wrong API key (401)
├── Refused                     a request the gateway's filter refused; says why (403)
├── NotFound                    unknown job, service, file or dataset (404)
│   ├── JobNotFound
│   └── ServiceNotFound
├── Conflict                    the operation does not fit the current state (409)
│   ├── IllegalTransition       a job state machine refused an event
│   └── LeaseLost               a worker's lease expired or was taken over
├── QueueFull                   admission refused; carries retry_after seconds (429)
├── Unavailable                 cannot serve now (storage, a failing service, overload); retry_after (503)
├── EngineError                 an engine failed to load or to run a batch
│   └── MissingExtra            an optional dependency is not installed; names the extra
└── DataError                   datasets, sources, cache and loader
    ├── IntegrityError          bytes do not match the manifest
    └── HeaderError             a malformed or hostile safetensors header
"""

from __future__ import annotations


class SwellError(Exception):
    """Root of every error Swell raises on purpose."""

    status_code: int = 500

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"error": type(self).__name__, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class ConfigError(SwellError):
    def __init__(self, message: str, *, key: str | None = None, file: str | None = None) -> None:
        where = " ".join(
            part for part in (f"in {file}" if file else "", f"at {key!r}" if key else "") if part
        )
        super().__init__(f"{message} ({where})" if where else message, field=key)
        self.key = key
        self.file = file


class ValidationError(SwellError):
    status_code = 422


class PayloadTooLarge(ValidationError):
    status_code = 413


class AuthError(SwellError):
    status_code = 401


class Refused(SwellError):
    """A request the gateway's filter refused (swell.gateway.filtering); `message` says why, `field` where."""

    status_code = 403


class NotFound(SwellError):
    status_code = 404


class JobNotFound(NotFound):
    pass


class ServiceNotFound(NotFound):
    pass


class Conflict(SwellError):
    status_code = 409


class IllegalTransition(Conflict):
    pass


class LeaseLost(Conflict):
    pass


class QueueFull(SwellError):
    status_code = 429

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(SwellError):
    """The request is fine but cannot be served now: storage is failing, the service's replicas keep
    crashing, or the gateway is shedding load. Answered 503 with `Retry-After`."""

    status_code = 503

    def __init__(self, message: str, *, retry_after: float = 1.0, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after


class EngineError(SwellError):
    pass


class MissingExtra(EngineError):
    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the optional dependencies: pip install 'swell[{extra}]'")
        self.extra = extra


class DataError(SwellError):
    pass


class IntegrityError(DataError):
    pass


class HeaderError(DataError):
    pass
