"""The server side of RPC: typed handlers registered as Connect unary routes on an aiohttp app.

``RpcService("testbed.orders.v1.OrderService")``, ``@svc.method("PlaceOrder")`` on
``async def handler(req: Model, ctx: CallContext) -> OtherModel`` and ``svc.add_routes(app)``.
The request body is validated into the annotated pydantic model (a bad field is an
``invalid_argument`` naming it); the handler runs under the caller's deadline
(``Connect-Timeout-Ms``), which calls it makes inherit; any ``RpcError`` it raises becomes the
Connect error answer, anything else ``internal`` (logged, never a stack trace on the wire).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints

import structlog
from aiohttp import web
from opentelemetry import propagate, trace
from pydantic import BaseModel, ValidationError

from mesh.codes import Code, RpcError, describe_validation_error
from mesh.deadlines import TIMEOUT_HEADER, bound_to

IDEMPOTENCY_HEADER = "Idempotency-Key"
_MAX_TIMEOUT_DIGITS = 10  # Connect: at most 10 digits

_log = structlog.get_logger("mesh.server")


@dataclass
class CallContext:
    """What a handler knows about the call besides its request message."""

    service: str
    method: str
    deadline: float | None
    idempotency_key: str | None
    headers: Mapping[str, str]
    app: web.Application
    """The application whose state the handler uses (its store, its clients)."""
    request: web.Request | None = None
    """The HTTP request; ``None`` for an in-process call (``RpcService.invoke_local``)."""
    response_headers: dict[str, str] = field(default_factory=dict)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative), or None without a deadline."""
        return None if self.deadline is None else self.deadline - time.monotonic()


Handler = Callable[[Any, CallContext], Awaitable[Any]]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True)
class _Method:
    name: str
    handler: Handler
    request_type: type[BaseModel]
    response_type: type[BaseModel]
    idempotent: bool


def _trace_id(headers: Mapping[str, str] | None = None) -> str | None:
    """Trace id (hex) of the current span, else of the incoming trace context, else None."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid and headers is not None:
        ctx = trace.get_current_span(propagate.extract(dict(headers))).get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else None


def error_response(error: RpcError, headers: Mapping[str, str] | None = None) -> web.Response:
    """The Connect error answer for ``error`` (trace id added when known)."""
    if error.trace_id is None:
        error.trace_id = _trace_id(headers)
    return web.json_response(error.to_json(), status=error.http_status)


def _parse_timeout(raw: str | None, now: float) -> float | None:
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > _MAX_TIMEOUT_DIGITS:
        raise RpcError(
            Code.INVALID_ARGUMENT,
            f"{TIMEOUT_HEADER} must be a positive integer of at most 10 digits, got {raw!r}",
        )
    return now + int(raw) / 1000


class RpcService:
    """The server side of one RPC service: typed handlers registered as Connect routes."""

    def __init__(self, name: str) -> None:
        if "/" in name or "." not in name:
            raise ValueError(f"service name {name!r} must look like 'package.v1.Service'")
        self.name = name
        self._methods: dict[str, _Method] = {}

    @property
    def methods(self) -> Mapping[str, _Method]:
        return self._methods

    def method(self, name: str, *, idempotent: bool = False) -> Callable[[H], H]:
        """Register ``async def h(req: Model, ctx: CallContext) -> Model`` as method ``name``."""

        def register(fn: H) -> H:
            hints = get_type_hints(fn)
            params = [p for p in hints if p != "return"]
            req_type = hints.get(params[0]) if params else None
            resp_type = hints.get("return")
            for what, tp in (("request", req_type), ("response", resp_type)):
                if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
                    raise TypeError(f"{self.name}/{name}: {what} type must be a pydantic model")
            if name in self._methods:
                raise ValueError(f"{self.name}/{name} is registered twice")
            self._methods[name] = _Method(name, fn, req_type, resp_type, idempotent)  # type: ignore[arg-type]
            return fn

        return register

    def add_routes(self, app: web.Application, *, state: web.Application | None = None) -> None:
        """Add ``POST /<service>/<method>`` (and GET for idempotent methods) to ``app``.

        ``state``: the application whose state handlers see as ``ctx.app`` (default ``app``);
        a monolith serves every hosted service's routes on one app, each with its own state.
        """
        for m in self._methods.values():
            path = f"/{self.name}/{m.name}"
            app.router.add_post(path, self._endpoint(m, state))
            if m.idempotent:
                app.router.add_get(path, self._endpoint(m, state), allow_head=False)
        app.router.add_route("*", f"/{self.name}/{{method}}", self._unknown)

    async def _unknown(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if method in self._methods:
            message = (
                f"{self.name}/{method} does not accept {request.method}; "
                "use POST (GET only for idempotent methods)"
            )
        else:
            known = ", ".join(sorted(self._methods)) or "none"
            message = f"{self.name} has no method {method!r} (methods: {known})"
        return error_response(RpcError(Code.UNIMPLEMENTED, message), request.headers)

    def _endpoint(
        self, m: _Method, state: web.Application | None
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def endpoint(request: web.Request) -> web.Response:
            try:
                return await self._handle(m, request, state or request.app)
            except RpcError as e:
                return error_response(e, request.headers)

        return endpoint

    async def _read_message(self, m: _Method, request: web.Request) -> BaseModel:
        where = f"{self.name}/{m.name}"
        if request.method == "GET":
            raw = request.query.get("message", "{}")
            if request.query.get("encoding", "json") != "json":
                raise RpcError(Code.INVALID_ARGUMENT, f"{where}: only encoding=json is supported")
            if request.query.get("base64") == "1":
                try:
                    raw = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
                except (binascii.Error, UnicodeDecodeError):
                    raise RpcError(
                        Code.INVALID_ARGUMENT, f"{where}: message is not valid base64"
                    ) from None
            body: str | bytes = raw
        else:
            ctype = request.headers.get("Content-Type", "application/json")
            if not ctype.split(";")[0].strip().lower().endswith("json"):
                raise RpcError(
                    Code.INVALID_ARGUMENT,
                    f"{where}: content type {ctype!r} is not supported; send application/json",
                )
            body = await request.read()
        if not body.strip():
            body = "{}"
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RpcError(
                Code.INVALID_ARGUMENT, f"{where}: request body is not valid JSON ({e})"
            ) from None
        if not isinstance(data, dict):
            raise RpcError(Code.INVALID_ARGUMENT, f"{where}: request body must be a JSON object")
        try:
            return m.request_type.model_validate(data)
        except ValidationError as e:
            raise RpcError(
                Code.INVALID_ARGUMENT, describe_validation_error(f"{where}: invalid request", e)
            ) from None

    async def _handle(
        self, m: _Method, request: web.Request, state: web.Application
    ) -> web.Response:
        arrived = time.monotonic()
        deadline = _parse_timeout(request.headers.get(TIMEOUT_HEADER), arrived)
        where = f"{self.name}/{m.name}"
        if deadline is not None and deadline <= arrived:
            raise RpcError(Code.DEADLINE_EXCEEDED, f"{where}: the deadline expired before arrival")
        message = await self._read_message(m, request)
        ctx = CallContext(
            service=self.name,
            method=m.name,
            deadline=deadline,
            idempotency_key=request.headers.get(IDEMPOTENCY_HEADER) or None,
            headers=request.headers,
            app=state,
            request=request,
        )
        result = await self._run(m, message, ctx, arrived)
        return web.Response(
            body=result.model_dump_json(),
            content_type="application/json",
            headers=ctx.response_headers,
        )

    async def invoke_local(
        self,
        method: str,
        payload: bytes,
        *,
        app: web.Application,
        deadline: float | None,
        idempotency_key: str | None,
    ) -> tuple[bytes, Mapping[str, str]]:
        """Call ``method`` in this process, as ``POST /<service>/<method>`` would: the same
        validation, deadline, idempotency key, error codes; the answer's JSON and headers.

        The request and the answer still cross as JSON, so caller and callee never share a
        mutable object (the same isolation as between processes); an ``RpcError`` is raised
        for a failed call, exactly as the HTTP endpoint would answer it.
        """
        arrived = time.monotonic()
        where = f"{self.name}/{method}"
        m = self._methods.get(method)
        if m is None:
            known = ", ".join(sorted(self._methods)) or "none"
            raise RpcError(Code.UNIMPLEMENTED, f"{self.name} has no method {method!r} ({known})")
        if deadline is not None and deadline <= arrived:
            raise RpcError(Code.DEADLINE_EXCEEDED, f"{where}: the deadline expired before arrival")
        try:
            message = m.request_type.model_validate_json(payload or b"{}")
        except ValidationError as e:
            raise RpcError(
                Code.INVALID_ARGUMENT, describe_validation_error(f"{where}: invalid request", e)
            ) from None
        ctx = CallContext(
            service=self.name,
            method=m.name,
            deadline=deadline,
            idempotency_key=idempotency_key,
            headers={},
            app=app,
        )
        result = await self._run(m, message, ctx, arrived)
        return result.model_dump_json().encode(), ctx.response_headers

    async def _run(
        self, m: _Method, message: BaseModel, ctx: CallContext, arrived: float
    ) -> BaseModel:
        """Run the handler under the call's deadline; any failure becomes an ``RpcError``."""
        deadline = ctx.deadline
        where = f"{self.name}/{m.name}"
        try:
            with bound_to(deadline):
                async with asyncio.timeout_at(_loop_time(deadline)) as scope:
                    result = await m.handler(message, ctx)
        except TimeoutError:
            if scope.expired():
                budget_ms = round(((deadline or arrived) - arrived) * 1000)
                raise RpcError(
                    Code.DEADLINE_EXCEEDED,
                    f"{where}: deadline exceeded after {budget_ms} ms while handling the call",
                ) from None
            raise RpcError(Code.INTERNAL, f"{where}: internal error (timeout)") from None
        except RpcError:
            raise
        except Exception as e:
            _log.exception("rpc_handler_failed", service=self.name, method=m.name)
            raise RpcError(Code.INTERNAL, f"{where}: internal error ({type(e).__name__})") from None
        if not isinstance(result, m.response_type):
            result = m.response_type.model_validate(result)
        return result


def _loop_time(deadline: float | None) -> float | None:
    """Convert a ``time.monotonic`` deadline to the running loop's clock."""
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())
