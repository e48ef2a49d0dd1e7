"""Connect error codes, their HTTP statuses, and ``RpcError``: the one error shape on the wire.

An error answer is ``{"code": "...", "message": "...", "trace_id": "..."}`` with the HTTP status
of its code (Connect protocol: https://connectrpc.com/docs/protocol#error-codes).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from mesh.errors import TestbedError


class Code(StrEnum):
    """Connect error codes."""

    CANCELED = "canceled"
    UNKNOWN = "unknown"
    INVALID_ARGUMENT = "invalid_argument"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    OUT_OF_RANGE = "out_of_range"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    DATA_LOSS = "data_loss"
    UNAUTHENTICATED = "unauthenticated"

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self]


# Connect protocol: error code -> HTTP status.
HTTP_STATUS: Mapping[Code, int] = {
    Code.CANCELED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

# Failures that say the upstream (not the request) is unwell: they feed breaker and ejection.
UPSTREAM_FAILURE_CODES = frozenset(
    {Code.UNAVAILABLE, Code.UNKNOWN, Code.INTERNAL, Code.DATA_LOSS, Code.DEADLINE_EXCEEDED}
)


def code_from_http_status(status: int) -> Code:
    """Connect's mapping for an error answer without a Connect error body."""
    return {
        400: Code.INTERNAL,
        401: Code.UNAUTHENTICATED,
        403: Code.PERMISSION_DENIED,
        404: Code.UNIMPLEMENTED,
        429: Code.UNAVAILABLE,
        502: Code.UNAVAILABLE,
        503: Code.UNAVAILABLE,
        504: Code.UNAVAILABLE,
    }.get(status, Code.UNKNOWN)


class RpcError(TestbedError):
    """An RPC failed with a Connect code; the one error shape crossing process boundaries."""

    def __init__(
        self,
        code: Code | str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        trace_id: str | None = None,
    ) -> None:
        super().__init__(f"{Code(code).value}: {message}")
        self.code = Code(code)
        self.message = message
        self.details = details
        self.trace_id = trace_id

    @property
    def http_status(self) -> int:
        return self.code.http_status

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.details:
            body["details"] = self.details
        if self.trace_id:
            body["trace_id"] = self.trace_id
        return body


def describe_validation_error(prefix: str, exc: ValidationError) -> str:
    """A message naming the offending fields (at most five) of a pydantic validation error."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"field {loc!r}: {err['msg']}")
    return f"{prefix}: " + "; ".join(parts)
