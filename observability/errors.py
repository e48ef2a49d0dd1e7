"""The one shape of an error answer: ``{"code": ..., "message": ..., "trace_id": ...}``.

``code`` is one of the RPC codes (Connect's names, ``mesh.rpc.Code``); ``trace_id`` is the
current span's trace id in lowercase hex, so a caller can find the failing hop in the traces.
Written here rather than imported from ``mesh.rpc`` so the process kit does not depend on the
RPC layer (which depends on it); the status<->code tables follow the Connect protocol.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from opentelemetry import trace

__all__ = [
    "CODE_TO_STATUS",
    "code_for_status",
    "current_trace_id",
    "error_body",
    "json_error",
]

CODE_TO_STATUS: dict[str, int] = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}

_STATUS_TO_CODE: dict[int, str] = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "unimplemented",
    408: "deadline_exceeded",
    409: "aborted",
    412: "failed_precondition",
    413: "resource_exhausted",
    429: "resource_exhausted",
    499: "canceled",
    500: "internal",
    501: "unimplemented",
    502: "unavailable",
    503: "unavailable",
    504: "deadline_exceeded",
}


def code_for_status(status: int) -> str:
    """The RPC code that best describes an HTTP error status."""
    if status in _STATUS_TO_CODE:
        return _STATUS_TO_CODE[status]
    return "invalid_argument" if 400 <= status < 500 else "unknown"


def current_trace_id() -> str | None:
    """The current span's trace id as lowercase hex, or None outside a span."""
    ctx = trace.get_current_span().get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else None


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "trace_id": current_trace_id()}
    body.update(extra)
    return body


def json_error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """An error answer in the shared shape; ``code`` defaults from ``status``."""
    return web.json_response(
        error_body(code or code_for_status(status), message, **extra),
        status=status,
        headers=headers,
    )
