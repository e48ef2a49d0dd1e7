"""Reading what a client sent, strictly: bounded bodies, JSON only, validated against the models.

Every refusal is a ``ProblemError`` naming what is wrong: 413 for a body over the limit
(checked on ``Content-Length`` first, then while reading, so a chunked body cannot exceed it
either), 415 for a body that is not JSON, 400 for malformed JSON or a field that fails the
schema (the field's path is in the detail), 400 for a malformed path id or header.
"""

from __future__ import annotations

import json
import re
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from edge.gateway.models import IDEMPOTENCY_KEY_PATTERN
from edge.gateway.problems import ProblemError, validation_problem
from services.common.types import ID_PATTERN

M = TypeVar("M", bound=BaseModel)

IDEMPOTENCY_HEADER = "Idempotency-Key"
_ID_RE = re.compile(ID_PATTERN)
_IDEMPOTENCY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)


def _too_large(limit: int) -> ProblemError:
    return ProblemError(413, "body-too-large", f"request body is larger than {limit} bytes")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(min(65536, limit + 1 - size))
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, model: type[M], *, limit: int) -> M:
    """Read, parse and validate a JSON body as ``model``."""
    body = await read_body(request, limit)
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ProblemError(
            415, "unsupported-media-type", "the body must be JSON (Content-Type: application/json)"
        )
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProblemError(400, "malformed-json", f"the body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc) from None


def path_id(request: web.Request, name: str = "id") -> str:
    """The id in the path, or 400 if it is not 1-64 URL-safe characters."""
    value = request.match_info[name]
    if not _ID_RE.fullmatch(value):
        raise ProblemError(
            400,
            "invalid-request",
            f"path parameter '{name}' must match {ID_PATTERN}",
        )
    return value


def idempotency_key(request: web.Request) -> str:
    """The ``Idempotency-Key`` header, required and well-formed, else 400."""
    value = request.headers.get(IDEMPOTENCY_HEADER)
    if value is None:
        raise ProblemError(
            400,
            "idempotency-key-required",
            f"header {IDEMPOTENCY_HEADER} is required: a unique value per order, "
            "reused when retrying the same order",
        )
    if not _IDEMPOTENCY_RE.fullmatch(value):
        raise ProblemError(
            400,
            "invalid-request",
            f"header {IDEMPOTENCY_HEADER} must match {IDEMPOTENCY_KEY_PATTERN}",
        )
    return value
