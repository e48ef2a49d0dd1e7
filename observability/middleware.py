"""The telemetry middleware: one server span, RED metrics, one canonical log line per request.

It is the outermost middleware of every public app, so what it records is what the client
saw, injected faults included. It also turns unhandled exceptions into the shared JSON error
answer (``{"code": "internal", ...}``, never a stack trace to the client; the exception is
logged with its traceback server-side) and HTTP errors raised by handlers or the router
(``web.HTTPNotFound`` ...) into the same shape.

A request an in-service fault was applied to carries ``testbed.fault`` (the fault kinds, e.g.
``latency+error``) on its span and ``fault`` on its log line, so analyses can tell injected
failures from real ones.

Span names are ``"{METHOD} {route template}"`` (just ``"{METHOD}"`` when no route matched, as
the semantic conventions say). Health and metrics endpoints are counted in the RED metrics
but get no span and their canonical line is logged at debug level, so a scraping Prometheus
does not flood traces and logs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from observability.errors import json_error
from observability.health import InFlight
from observability.logs import get_logger
from observability.metrics import UNMATCHED, HttpMetrics, route_template

__all__ = [
    "QUIET_ROUTES",
    "STANDARD_METHODS",
    "error_answer",
    "make_telemetry_middleware",
    "request_fault",
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

_propagator: Final = TraceContextTextMapPropagator()  # stateless W3C traceparent codec
_log = get_logger("observability.http")


def request_fault(request: web.Request) -> str | None:
    return request.get(FAULT_KEY)


def _method(request: web.Request) -> str:
    return request.method if request.method in STANDARD_METHODS else "_OTHER"


def _start_attributes(request: web.Request, method: str, route: str) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {
        "http.request.method": method,
        "url.path": request.path,
        "url.scheme": request.scheme,
    }
    if route != UNMATCHED:
        attrs["http.route"] = route
    host = request.url.host
    if host:
        attrs["server.address"] = host
    port = request.url.port
    if port is not None:
        attrs["server.port"] = port
    if request.remote:
        attrs["client.address"] = request.remote
    agent = request.headers.get(hdrs.USER_AGENT)
    if agent:
        attrs["user_agent.original"] = agent
    if request.query_string:
        attrs["url.query"] = request.query_string
    return attrs


def _from_http_exception(exc: web.HTTPException) -> web.StreamResponse:
    """An HTTP error raised by a handler or the router, as the shared JSON error answer."""
    if exc.status < 400 or exc.content_type == "application/json":
        return exc
    headers = {
        k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
    }
    text = exc.text or ""
    default_text = f"{exc.status}: {exc.reason}"
    message = exc.reason if text in ("", default_text) else text
    return json_error(exc.status, message, headers=headers)


def _error_type(exc: BaseException) -> str:
    """The exception's fully qualified class name (``error.type``); builtins unqualified."""
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


async def _call(
    request: web.Request, handler: Handler, span: Span | None
) -> tuple[web.StreamResponse, str | None]:
    """Run the handler; returns the answer and ``error.type`` (None if no error)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = _from_http_exception(exc)
        if response is exc and exc.status < 400:
            raise
    except Exception as exc:
        _log.exception("unhandled_exception", path=request.path, error_type=type(exc).__name__)
        if span is not None:
            span.record_exception(exc)
        return json_error(500, "internal error", code="internal"), _error_type(exc)
    error_type = str(response.status) if response.status >= 500 else None
    return response, error_type


async def error_answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run ``handler``; HTTP errors and unhandled exceptions become the shared JSON answer."""
    response, _ = await _call(request, handler, None)
    return response


def make_telemetry_middleware(
    tracer: Tracer, metrics: HttpMetrics, in_flight: InFlight
) -> Middleware:
    """The outermost middleware of a public app."""

    @web.middleware
    async def telemetry(request: web.Request, handler: Handler) -> web.StreamResponse:
        method = _method(request)
        route = route_template(request)
        in_flight.enter()
        metrics.in_flight.inc()
        try:
            if route in QUIET_ROUTES:
                return await _observe(request, handler, None, method, route, metrics)
            with tracer.start_as_current_span(
                method if route == UNMATCHED else f"{method} {route}",
                context=_propagator.extract(request.headers),
                kind=SpanKind.SERVER,
                attributes=_start_attributes(request, method, route),
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                return await _observe(request, handler, span, method, route, metrics)
        finally:
            metrics.in_flight.dec()
            in_flight.leave()

    return telemetry


async def _observe(
    request: web.Request,
    handler: Handler,
    span: Span | None,
    method: str,
    route: str,
    metrics: HttpMetrics,
) -> web.StreamResponse:
    """Handle the request and record it (metrics, span attributes, the canonical line)."""
    status = 500
    error_type: str | None = None
    started = time.perf_counter()
    try:
        response, error_type = await _call(request, handler, span)
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
        if span is not None:
            span.set_attribute("http.response.status_code", status)
            fault = request_fault(request)
            if fault is not None:
                span.set_attribute("testbed.fault", fault)
            if error_type is not None:
                span.set_attribute("error.type", error_type)
                span.set_status(Status(StatusCode.ERROR))
        metrics.observe(method, route, status, elapsed)
        _log_request(request, method, route, status, elapsed, quiet=span is None)


def _log_request(
    request: web.Request, method: str, route: str, status: int, elapsed: float, *, quiet: bool
) -> None:
    """The canonical line; called inside the span's context when there is a span."""
    fields: dict[str, object] = {
        "method": method,
        "route": route,
        "path": request.path,
        "status": status,
        "duration_ms": round(elapsed * 1000.0, 3),
    }
    fault = request_fault(request)
    if fault is not None:
        fields["fault"] = fault
    if quiet:
        _log.debug("request", **fields)
    elif status >= 500:
        _log.warning("request", **fields)
    else:
        _log.info("request", **fields)
