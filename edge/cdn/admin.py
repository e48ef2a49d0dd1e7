"""The purge API on the PoP's admin listener (token-checked by ``observability.admin``).

``POST /admin/purge`` with exactly one of::

    {"paths": ["/static/app.js", "/api/products"]}   every stored variant of these paths
                                                      (any query string)
    {"prefix": "/static/"}                            every stored target starting with it
    {"all": true}                                     everything

answers ``{"purged": <objects removed>}``; anything else is a 400 naming what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from edge.cdn.store import CacheStore
from observability.errors import json_error

MAX_PURGE_BODY = 64 * 1024
MAX_PURGE_PATHS = 1000


class PurgeInputError(ValueError):
    """A purge request that cannot be carried out; the message says why."""


def parse_purge(body: Any) -> tuple[str, Any]:
    """Validate a purge body: ``("paths", [...])``, ``("prefix", str)`` or ``("all", True)``."""
    if not isinstance(body, dict):
        raise PurgeInputError(
            'the body must be a JSON object: {"paths": [...]}, {"prefix": ...} or {"all": true}'
        )
    keys = set(body)
    unknown = keys - {"paths", "prefix", "all"}
    if unknown:
        raise PurgeInputError(f"unknown field(s): {', '.join(sorted(unknown))}")
    if len(keys) != 1:
        raise PurgeInputError('give exactly one of "paths", "prefix" or "all"')
    (kind,) = keys
    value = body[kind]
    if kind == "all":
        if value is not True:
            raise PurgeInputError('"all" must be true')
        return kind, True
    if kind == "prefix":
        if not isinstance(value, str) or not value.startswith("/"):
            raise PurgeInputError('"prefix" must be a string starting with "/"')
        return kind, value
    if not isinstance(value, list) or not value:
        raise PurgeInputError('"paths" must be a non-empty list of paths')
    if len(value) > MAX_PURGE_PATHS:
        raise PurgeInputError(f'"paths" holds more than {MAX_PURGE_PATHS} entries')
    for path in value:
        if not isinstance(path, str) or not path.startswith("/"):
            raise PurgeInputError(f'every path must be a string starting with "/": {path!r}')
    return kind, list(value)


def make_purge_handler(
    store: CacheStore, on_purged: Callable[[int], None] | None = None
) -> Handler:
    async def purge(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_PURGE_BODY:
            return json_error(413, f"body larger than {MAX_PURGE_BODY} bytes")
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return json_error(400, "the body is not valid JSON")
        try:
            kind, value = parse_purge(body)
        except PurgeInputError as exc:
            return json_error(400, str(exc))
        if kind == "all":
            count = store.purge_all()
        elif kind == "prefix":
            count = store.purge_prefix(value)
        else:
            count = store.purge_paths(value)
        if on_purged is not None:
            on_purged(count)
        return web.json_response({"purged": count})

    return purge
