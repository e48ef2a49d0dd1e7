"""Every error the gateway answers, as one shape: RFC 9457 ``application/problem+json``.

``ProblemError`` is raised by handlers and middlewares with a status, a short slug and a detail
a person can act on; ``problem_middleware`` turns it (and aiohttp's own HTTP errors such as
404/405, and anything unexpected) into a problem document carrying the trace id. An unexpected
exception is logged with its stack trace and answered as a bare 500: no stack trace, exception
text or internal name ever reaches a client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from http import HTTPStatus

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from edge.gateway.models import FieldError, Problem
from observability.errors import PROBLEM_CONTENT_TYPE as _PROBLEM_CONTENT_TYPE
from observability.errors import PROBLEM_TYPE_PREFIX, current_trace_id
from observability.logs import get_logger

# The edge's one error shape (observability.errors), with the gateway's field errors.
PROBLEM_CONTENT_TYPE = _PROBLEM_CONTENT_TYPE
TYPE_PREFIX = PROBLEM_TYPE_PREFIX

_log = get_logger("edge.gateway")


class ProblemError(Exception):
    """An error answer: HTTP ``status``, a ``slug`` naming its type, and a ``detail``."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[FieldError] | None = None,
        title: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = dict(headers or {})
        self.errors = list(errors) if errors is not None else None
        self.title = title or HTTPStatus(status).phrase


def problem_response(error: ProblemError) -> web.Response:
    """The ``application/problem+json`` answer for ``error``."""
    body = Problem(
        type=TYPE_PREFIX + error.slug,
        title=error.title,
        status=error.status,
        detail=error.detail,
        trace_id=current_trace_id(),
    )
    if error.errors is not None:
        body = body.model_copy(update={"errors": error.errors})
    headers = {"Cache-Control": "no-store", **error.headers}
    return web.Response(
        status=error.status,
        body=body.model_dump_json(exclude_unset=True).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def _field_path(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc) or "(body)"


def validation_problem(exc: ValidationError, *, where: str = "body") -> ProblemError:
    """A 400 naming each invalid field of a request ``where`` (body, query, path)."""
    errors = [FieldError(field=_field_path(err["loc"]), message=err["msg"]) for err in exc.errors()]
    first = errors[0] if errors else FieldError(field="(body)", message="invalid")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ProblemError(
        400,
        "invalid-request",
        f"{where} field '{first.field}': {first.message}{more}",
        errors=errors,
    )


def retry_after_seconds(seconds: float) -> str:
    """``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def _from_http_exception(exc: web.HTTPException) -> ProblemError:
    headers: dict[str, str] = {}
    if "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    slugs = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}
    details = {
        404: "no such resource",
        405: "method not allowed on this resource",
        413: "request body too large",
    }
    status = exc.status
    return ProblemError(
        status,
        slugs.get(status, "http-error"),
        details.get(status, HTTPStatus(status).phrase),
        headers=headers,
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error as problem+json; never let an exception's text reach the client."""
    try:
        return await handler(request)
    except ProblemError as exc:
        return problem_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and 304s are answers, not errors
        return problem_response(_from_http_exception(exc))
    except Exception:
        _log.exception("unhandled_error", path=request.path, method=request.method)
        return problem_response(
            ProblemError(500, "internal", "the gateway failed to handle this request")
        )
