"""The admin API, on its own listener (``TESTBED_ADMIN_PORT``), protected by ``X-Admin-Token``.

Routes (components add their own to the same app)::

    GET    /faults            the active faults
    PUT    /faults/{kind}     switch a fault on (body: the fault's settings, JSON)
    DELETE /faults/{kind}     switch one kind off
    DELETE /faults            switch every fault off

Every route answers 401 without the right token. Bad fault bodies get 400 with the reason.
"""

from __future__ import annotations

import hmac
import json

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from observability.errors import json_error
from observability.faults import FAULT_KINDS, FaultInputError, parse_fault
from observability.keys import CONFIG_KEY, FAULTS_KEY, MAIN_APP_KEY
from observability.logs import get_logger
from observability.middleware import error_answer

__all__ = ["ADMIN_TOKEN_HEADER", "add_fault_routes", "make_admin_middleware"]

ADMIN_TOKEN_HEADER = "X-Admin-Token"
MAX_BODY_BYTES = 64 * 1024
_log = get_logger("observability.admin")


def make_admin_middleware(token: str) -> Middleware:
    """Token check, JSON errors and one log line per admin request."""
    expected = token.encode()

    @web.middleware
    async def admin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get(ADMIN_TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(given, expected):
            _log.warning("admin_unauthorized", method=request.method, path=request.path)
            return json_error(401, f"missing or wrong {ADMIN_TOKEN_HEADER} header")
        response = await error_answer(request, handler)
        _log.info("admin_request", method=request.method, path=request.path, status=response.status)
        return response

    return admin_guard


def _faults(request: web.Request) -> web.Application:
    return request.app[MAIN_APP_KEY]


async def list_faults(request: web.Request) -> web.Response:
    faults = _faults(request)[FAULTS_KEY]
    return web.json_response({"faults": [f.describe() for f in faults.active()]})


async def set_fault(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    if kind not in FAULT_KINDS:
        return json_error(404, f"unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return json_error(413, f"body larger than {MAX_BODY_BYTES} bytes")
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        return json_error(400, "the body is not valid JSON")
    try:
        spec = parse_fault(kind, body)
    except FaultInputError as exc:
        return json_error(400, str(exc))
    active = _faults(request)[FAULTS_KEY].set(spec)
    return web.json_response({"fault": active.describe()})


async def clear_fault(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    if kind not in FAULT_KINDS:
        return json_error(404, f"unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}")
    cleared = _faults(request)[FAULTS_KEY].clear(kind)
    return web.json_response({"cleared": 1 if cleared else 0})


async def clear_faults(request: web.Request) -> web.Response:
    return web.json_response({"cleared": _faults(request)[FAULTS_KEY].clear_all()})


async def admin_info(request: web.Request) -> web.Response:
    process = _faults(request)[CONFIG_KEY]
    return web.json_response(
        {
            "service": process.service,
            "instance_id": process.instance_id,
            "version": process.version,
        }
    )


def add_fault_routes(admin: web.Application) -> None:
    admin.router.add_get("/", admin_info)
    admin.router.add_get("/faults", list_faults)
    admin.router.add_delete("/faults", clear_faults)
    admin.router.add_put("/faults/{kind}", set_fault)
    admin.router.add_delete("/faults/{kind}", clear_fault)
