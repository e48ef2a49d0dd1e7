"""The telemetry middleware: a server span, RED metrics and a canonical log line per request.

It is the outermost middleware of every public app, so what it records is what the client
saw, injected faults included. It also turns unhandled exceptions into the app's error answer
(``{"code": "internal", ...}``, or problem+json at the edge; never a stack trace to the
client; the exception is logged with its traceback server-side) and HTTP errors raised by
handlers or the router (``web.HTTPNotFound`` ...) into the same shape.

A request an in-service fault was applied to carries ``testbed.fault`` (the fault kinds, e.g.
``latency+error``) on its span and ``fault`` on its log line, so analyses can tell injected
failures from real ones.

Span names are ``"{METHOD} {route template}"`` (just ``"{METHOD}"`` when no route matched, as
the semantic conventions say). Health and metrics endpoints are counted in the RED metrics
but get no span and their canonical line is logged at debug level, so a scraping Prometheus
does not flood traces and logs.

At a trust boundary (the CDN PoPs, ``trace_trust``), a request from a peer that is not
trusted does not continue the trace it carries: its span starts a new trace, as the sampler's
budget allows, with the client's context as a span link (``untrusted_parent``), so no client
can force tracing or plant trace ids.

Spans are recorded as the trace sampler decides (by default every new trace up to 100 a
second per process, see ``observability.tracing``); the canonical line follows it, and is
written for every 5xx or fault-injected request whether traced or not. The RED metrics count
every request.

Per-request cost is kept low because every request of every process pays it: span names,
``server.address``/``server.port`` (parsed from the Host header) and the metric children are
computed once per distinct value and reused (bounded maps), the span is made current with a
plain context attach rather than the SDK's context-manager stack, the fault check runs in this
middleware instead of a second one, and the in-flight gauge reads the ``InFlight`` counter
when scraped instead of being moved on every request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import context as context_api
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from yarl import URL

from observability.errors import RPC_ERRORS, ErrorShape
from observability.health import InFlight
from observability.logs import get_logger
from observability.metrics import UNMATCHED, HttpMetrics, route_template
from observability.sampling import UnsampledSpan

if TYPE_CHECKING:
    from observability.faults import FaultController

__all__ = [
    "QUIET_ROUTES",
    "STANDARD_METHODS",
    "HasPath",
    "HostAddresses",
    "end_span_attributes",
    "error_answer",
    "log_request",
    "make_telemetry_middleware",
    "record_request",
    "request_fault",
    "start_attributes",
    "untrusted_parent",
]

QUIET_ROUTES: Final = frozenset({"/healthz", "/readyz", "/metrics"})
"""Routes that get no span and no info-level log line (they are still counted)."""

STANDARD_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)

FAULT_KEY: Final = web.RequestKey("testbed_fault", str)
"""``request[FAULT_KEY]``: the kind of fault injected into this request, for the log line."""

CLIENT_CLOSED: Final = 499
"""Recorded (never sent) when the client went away or the handler was cancelled."""

MEMO_SIZE: Final = 1024
"""Bound of each per-middleware memo (span names, Host header values)."""

_propagator: Final = TraceContextTextMapPropagator()  # stateless W3C traceparent codec
_ERROR: Final = Status(StatusCode.ERROR)
_log = get_logger("observability.http")


CLIENT_LINK_ATTRIBUTES: Final = {"testbed.link": "untrusted_client_context"}
"""On the link from a span to the trace context an untrusted client sent."""
_ROOT: Final = Context()


def untrusted_parent(parent: Context) -> tuple[Context, list[Link] | None]:
    """What a request from an untrusted client that sent ``parent`` gets instead: no parent
    (a new trace, under the sampler's budget) and ``parent``'s span context as a link."""
    client = get_current_span(parent).get_span_context()
    if not client.is_valid:
        return _ROOT, None
    return _ROOT, [Link(client, CLIENT_LINK_ATTRIBUTES)]


def request_fault(request: web.Request) -> str | None:
    return request.get(FAULT_KEY)


def _method(request: web.Request) -> str:
    method = request.method
    return method if method in STANDARD_METHODS else "_OTHER"


def _host_and_port(scheme: str, host: str) -> tuple[str | None, int | None]:
    """``request.url.host`` and ``request.url.port`` for a Host header value, as aiohttp's
    ``request.url`` derives them (without building the whole URL)."""
    try:
        url = URL.build(scheme=scheme, authority=host)
    except ValueError:
        return None, None
    return url.host, url.port


def start_attributes(
    method: str,
    route: str,
    path: str,
    scheme: str,
    address: tuple[str | None, int | None],
    remote: str | None,
    agent: str | None,
    query: str,
) -> dict[str, AttributeValue]:
    """A recorded server span's attributes at its start (HTTP semantic conventions)."""
    attrs: dict[str, AttributeValue] = {
        "http.request.method": method,
        "url.path": path,
        "url.scheme": scheme,
    }
    if route != UNMATCHED:
        attrs["http.route"] = route
    host, port = address
    if host:
        attrs["server.address"] = host
    if port is not None:
        attrs["server.port"] = port
    if remote:
        attrs["client.address"] = remote
    if agent:
        attrs["user_agent.original"] = agent
    if query:
        attrs["url.query"] = query
    return attrs


def end_span_attributes(span: Span, status: int, fault: str | None, error_type: str | None) -> None:
    """A server span's attributes (and error status) once its answer is known."""
    if fault is None and error_type is None:
        span.set_attribute("http.response.status_code", status)
        return
    end_attrs: dict[str, AttributeValue] = {"http.response.status_code": status}
    if fault is not None:
        end_attrs["testbed.fault"] = fault
    if error_type is not None:
        end_attrs["error.type"] = error_type
    span.set_attributes(end_attrs)
    if error_type is not None:
        span.set_status(_ERROR)


class HostAddresses:
    """``(server.address, server.port)`` per (scheme, Host header), parsed once (bounded)."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], tuple[str | None, int | None]] = {}

    def __call__(self, scheme: str, host: str) -> tuple[str | None, int | None]:
        key = (scheme, host)
        found = self._found.get(key)
        if found is None:
            found = _host_and_port(scheme, host)
            if len(self._found) >= MEMO_SIZE:
                self._found.clear()
            self._found[key] = found
        return found


def _from_http_exception(exc: web.HTTPException, shape: ErrorShape) -> web.StreamResponse:
    """An HTTP error raised by a handler or the router, as the app's error answer."""
    if exc.status < 400 or exc.content_type in ("application/json", "application/problem+json"):
        return exc
    headers = {
        k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
    }
    text = exc.text or ""
    default_text = f"{exc.status}: {exc.reason}"
    message = exc.reason if text in ("", default_text) else text
    return shape.answer(exc.status, message, headers=headers)


def _error_type(exc: BaseException) -> str:
    """The exception's fully qualified class name (``error.type``); builtins unqualified."""
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


async def _call(
    request: web.Request,
    handler: Handler,
    span: Span | None,
    faults: FaultController | None = None,
    route: str = UNMATCHED,
    shape: ErrorShape = RPC_ERRORS,
) -> tuple[web.StreamResponse, str | None]:
    """Run the handler (after the request faults, when ``faults`` is given); returns the
    answer and ``error.type`` (None if no error)."""
    try:
        response = None
        if faults is not None:
            response = await faults.apply(request, route)
        if response is None:
            response = await handler(request)
    except web.HTTPException as exc:
        response = _from_http_exception(exc, shape)
        if response is exc and exc.status < 400:
            raise
    except Exception as exc:
        _log.exception("unhandled_exception", path=request.path, error_type=type(exc).__name__)
        if span is not None:
            span.record_exception(exc)
        return shape.answer(500, "internal error", code="internal"), _error_type(exc)
    error_type = str(response.status) if response.status >= 500 else None
    return response, error_type


async def error_answer(
    request: web.Request, handler: Handler, shape: ErrorShape = RPC_ERRORS
) -> web.StreamResponse:
    """Run ``handler``; HTTP errors and unhandled exceptions become the app's error answer."""
    response, _ = await _call(request, handler, None, shape=shape)
    return response


def make_telemetry_middleware(
    tracer: Tracer,
    metrics: HttpMetrics,
    in_flight: InFlight,
    *,
    faults: FaultController | None = None,
    unsampled: UnsampledSpan | None = None,
    trace_trust: Callable[[str | None], bool] | None = None,
    error_shape: ErrorShape = RPC_ERRORS,
) -> Middleware:
    """The outermost middleware of a public app.

    ``trace_trust`` (a trust boundary): whether a request from this peer address continues
    the trace it carries; one that does not starts a new trace (``untrusted_parent``).
    ``error_shape``: the shape of the errors it answers itself (``observability.errors``).

    With ``faults``, request faults are applied here too (to every route but the quiet ones),
    so no separate fault middleware is needed; the in-flight gauge of ``metrics`` is bound to
    ``in_flight``. ``unsampled`` (``observability.sampling.unsampled_span_maker``) makes the
    span of a request the sampler will drop more cheaply than ``tracer.start_span``.
    """
    metrics.in_flight.set_function(lambda: in_flight.count)
    span_names: dict[tuple[str, str], str] = {}
    address = HostAddresses()

    def span_name(method: str, route: str) -> str:
        name = span_names.get((method, route))
        if name is None:
            name = method if route == UNMATCHED else f"{method} {route}"
            if len(span_names) >= MEMO_SIZE:
                span_names.clear()
            span_names[(method, route)] = name
        return name

    @web.middleware
    async def telemetry(request: web.Request, handler: Handler) -> web.StreamResponse:
        method = _method(request)
        route = route_template(request)
        in_flight.enter()
        try:
            if route in QUIET_ROUTES:
                return await _observe(
                    request, handler, None, method, route, metrics, None, error_shape
                )
            parent = _propagator.extract(request.headers)
            links: list[Link] | None = None
            if trace_trust is not None and not trace_trust(request.remote):
                parent, links = untrusted_parent(parent)
            span = unsampled(parent) if unsampled is not None else None
            if span is None:
                span = tracer.start_span(
                    span_name(method, route),
                    context=parent,
                    links=links,
                    kind=SpanKind.SERVER,
                    record_exception=False,
                    set_status_on_exception=False,
                )
                if span.is_recording():  # not sampled: no attributes to build
                    attributes = start_attributes(
                        method,
                        route,
                        request.path,
                        request.scheme,
                        address(request.scheme, request.host),
                        request.remote,
                        request.headers.get(hdrs.USER_AGENT),
                        request.query_string,
                    )
                    span.set_attributes(attributes)
            # What ``start_as_current_span`` does, without its context-manager layers.
            token = context_api.attach(set_span_in_context(span))
            try:
                return await _observe(
                    request, handler, span, method, route, metrics, faults, error_shape
                )
            finally:
                context_api.detach(token)
                span.end()
        finally:
            in_flight.leave()

    return telemetry


async def _observe(
    request: web.Request,
    handler: Handler,
    span: Span | None,
    method: str,
    route: str,
    metrics: HttpMetrics,
    faults: FaultController | None,
    shape: ErrorShape,
) -> web.StreamResponse:
    """Handle the request and record it (metrics, span attributes, the canonical line)."""
    status = 500
    error_type: str | None = None
    started = time.perf_counter()
    try:
        response, error_type = await _call(request, handler, span, faults, route, shape)
        status = response.status
        return response
    except web.HTTPException as exc:  # a redirect or a 2xx raised: not an error
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        error_type = "cancelled"
        raise
    finally:
        elapsed = time.perf_counter() - started
        fault = request.get(FAULT_KEY)
        record_request(metrics, request, span, method, route, status, elapsed, fault, error_type)


class HasPath(Protocol):
    """A request as the canonical line reads it: aiohttp's, or the wire lane's."""

    @property
    def path(self) -> str: ...


def record_request(
    metrics: HttpMetrics,
    request: HasPath,
    span: Span | None,
    method: str,
    route: str,
    status: int,
    elapsed: float,
    fault: str | None,
    error_type: str | None,
) -> None:
    """What every way of serving a request records once it is answered (this middleware,
    the fast lane, the wire lane): the span's end attributes, the RED metrics, the canonical
    line."""
    if span is not None:
        end_span_attributes(span, status, fault, error_type)
    metrics.observe(method, route, status, elapsed)
    log_request(request, span, method, route, status, elapsed, fault)


def log_request(
    request: HasPath,
    span: Span | None,
    method: str,
    route: str,
    status: int,
    elapsed: float,
    fault: str | None,
) -> None:
    """The canonical line; called inside the span's context when there is a span (whose ids
    are passed along, saving the log processor a context lookup).

    Written for every traced request, and for every failed (5xx) or fault-injected one traced
    or not: the lines follow the trace sampler, so at the experiments' loads every request
    has its line, and a saturated process does not spend more on logging as its load grows
    (the RED metrics count every request). Quiet routes log at debug level. The request's
    path is read only for a line that is written.
    """
    if span is not None and status < 500 and fault is None and not span.is_recording():
        return
    fields: dict[str, object] = {
        "method": method,
        "route": route,
        "path": request.path,
        "status": status,
        "duration_ms": round(elapsed * 1000.0, 3),
    }
    if fault is not None:
        fields["fault"] = fault
    if span is None:
        _log.debug("request", **fields)
        return
    ctx = span.get_span_context()
    if ctx.is_valid:
        fields["trace_id"] = f"{ctx.trace_id:032x}"
        fields["span_id"] = f"{ctx.span_id:016x}"
    if status >= 500:
        _log.warning("request", **fields)
    else:
        _log.info("request", **fields)
