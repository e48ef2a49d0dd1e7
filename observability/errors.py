"""The two shapes of an error answer, both carrying the trace id of the failed request.

Between our own processes (the services' RPC): ``{"code": ..., "message": ..., "trace_id":
...}`` as ``application/json``. ``code`` is one of the RPC codes (Connect's names,
``mesh.rpc.Code``); ``trace_id`` is the current span's trace id in lowercase hex, so a caller
can find the failing hop in the traces. Written here rather than imported from ``mesh.rpc``
so the process kit does not depend on the RPC layer (which depends on it); the status<->code
tables follow the Connect protocol.

At the edge (CDN PoPs, balancer, gateway: whatever a client can get): RFC 9457
``application/problem+json``, ``{"type": "urn:testbed:problem:<slug>", "title": <the
status's phrase>, "status": ..., "detail": ..., "trace_id": ...}`` (the gateway may add
``errors``, one per invalid field). ``ErrorShape`` names which one an app answers in
(``RPC_ERRORS`` or ``PROBLEM_ERRORS``); the process kit's middleware, its fault injection and
the wire lane answer their own errors in the app's shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web
from opentelemetry import trace

__all__ = [
    "CODE_TO_STATUS",
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_ERRORS",
    "PROBLEM_TYPE_PREFIX",
    "RPC_ERRORS",
    "ErrorShape",
    "code_for_status",
    "current_trace_id",
    "error_body",
    "json_error",
    "problem_document",
    "problem_error",
    "status_title",
]

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
PROBLEM_TYPE_PREFIX: Final = "urn:testbed:problem:"
_CURRENT: Final = object()

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


def status_title(status: int) -> str:
    """The standard phrase of ``status`` (``Not Found``), RFC 9457's ``title``."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Client Closed Request" if status == 499 else "Error"


def problem_document(
    status: int, slug: str, detail: str, *, trace_id: str | object | None = _CURRENT
) -> dict[str, Any]:
    """An RFC 9457 problem: type ``urn:testbed:problem:<slug>``, the status's title, the
    ``detail`` a person can act on, and the trace id (the current span's unless given)."""
    return {
        "type": PROBLEM_TYPE_PREFIX + slug,
        "title": status_title(status),
        "status": status,
        "detail": detail,
        "trace_id": current_trace_id() if trace_id is _CURRENT else trace_id,
    }


def problem_error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """``json_error``'s answer as ``application/problem+json`` (the slug is the RPC code with
    dashes, ``not-found``); never stored by a cache."""
    slug = (code or code_for_status(status)).replace("_", "-")
    return web.Response(
        status=status,
        body=json.dumps(problem_document(status, slug, message)).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


@dataclass(frozen=True)
class ErrorShape:
    """Which shape an app answers its own errors in: RPC JSON, or problem+json."""

    problem: bool

    def answer(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        if self.problem:
            return problem_error(status, message, code=code, headers=headers)
        return json_error(status, message, code=code, headers=headers)

    def encoded(
        self, status: int, message: str, code: str, trace_id: str | None
    ) -> tuple[bytes, bytes]:
        """``(content type, body)`` of an error answer written as bytes (the wire lane)."""
        if self.problem:
            slug = code.replace("_", "-")
            document = problem_document(status, slug, message, trace_id=trace_id)
            return PROBLEM_CONTENT_TYPE.encode(), json.dumps(document).encode()
        body = json.dumps(error_body(code, message, trace_id=trace_id)).encode()
        return b"application/json", body


RPC_ERRORS: Final = ErrorShape(problem=False)
PROBLEM_ERRORS: Final = ErrorShape(problem=True)
