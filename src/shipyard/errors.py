"""Errors that reach a client, shaped like OpenAI's error JSON.

Every error the gateway returns is a :class:`GatewayError`: it carries the HTTP status,
OpenAI's ``type`` and ``code`` fields and a message that says what was tried. Nothing
here ever includes a stack trace or a secret.
"""

from __future__ import annotations

from typing import Any


class ShipyardError(Exception):
    """Base class for every error raised by Shipyard."""


class ConfigError(ShipyardError):
    """The configuration is invalid; raised at start-up, naming the key."""


class GatewayError(ShipyardError):
    """An error returned to a client as OpenAI's error JSON."""

    status: int = 500
    type: str = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.details is not None:
            err["shipyard"] = self.details
        return {"error": err}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"


class UpstreamError(ShipyardError):
    """One failed attempt against one target; the router decides what happens next.

    ``retryable`` is true for 429, 5xx, timeouts and connection errors; ``failover`` is
    true when another target may succeed where this one failed.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        failover: bool = True,
        retry_after: float | None = None,
        kind: str = "error",
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.failover = failover
        self.retry_after = retry_after
        self.kind = kind
        self.body = body

    @classmethod
    def from_status(
        cls, status: int, message: str, *, retry_after: float | None = None, body: Any = None
    ) -> "UpstreamError":
        retryable = status == 429 or status == 408 or status >= 500
        # 400/422 are the client's own mistakes: another provider would reject them too.
        failover = status not in (400, 422)
        return cls(
            message,
            status=status,
            retryable=retryable,
            failover=failover,
            retry_after=retry_after,
            kind="http_%d" % status,
            body=body,
        )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    import time

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
