"""The fast lane: requests served before routing, when they will not be traced anyway.

A component may give its app a ``FastLane`` for its catch-all route, tried only for a request
that would get no recorded span anyway: no incoming ``traceparent``, the rate-limited sampler
out of credit for new traces just now (``observability.sampling``), no fault active in the
process, not one of the quiet routes (``/healthz``, ``/readyz``, ``/metrics``). Such a request
skips the router, the middleware chain and the span machinery, which together cost a
saturated edge hop more than its own work. Everything the telemetry middleware would have
recorded for it is still recorded: the RED metrics under the route the lane stands in for, the
in-flight count (so a draining process waits for it), a canonical log line if it fails (5xx),
and a span context that is not sampled, so the decision still propagates downstream.

Two kinds:

``answer``   synchronous: answers at once or returns None to send the request down the normal
             path. The CDN PoP answers fresh cache hits this way.
``handler``  asynchronous: handles every such request, as the route's handler would. The load
             balancer proxies this way.

Below the sampler's rate (the experiments' loads) no request takes the lane: each is traced.
A component that also has a wire lane (``edge.front.wire``: the balancer and the PoPs)
serves most requests there, below aiohttp altogether; this lane serves the connections the
wire lane hands to aiohttp.
``edge.bench`` measures what the lane buys a saturated PoP and balancer.

It is installed on the listener's ``web.Server`` (its ``request_handler``, which aiohttp calls
for every request before the app's router) by ``observability.app.run``; tests install it on
their test server with ``install_fast_lane``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, cast

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_request import BaseRequest
from opentelemetry import context as context_api
from opentelemetry.context import Context
from opentelemetry.trace import set_span_in_context

from observability.keys import (
    ERROR_SHAPE_KEY,
    FAULTS_KEY,
    HTTP_METRICS_KEY,
    IN_FLIGHT_KEY,
    TRACER_PROVIDER_KEY,
)
from observability.logs import get_logger
from observability.middleware import (
    CLIENT_CLOSED,
    QUIET_ROUTES,
    STANDARD_METHODS,
    error_answer,
    record_request,
)
from observability.sampling import trace_budget, unsampled_span_maker

__all__ = ["FAST_LANE_KEY", "FastLane", "install_fast_lane"]

_TRACEPARENT: Final = "traceparent"
_EXPECT: Final = "Expect"
_log = get_logger("edge.front.fastlane")

RequestHandler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class FastLane:
    """The route template the lane's requests are counted under, and how it serves them."""

    route: str
    answer: Callable[[web.Request], web.StreamResponse | None] | None = None
    handler: Handler | None = None

    def __post_init__(self) -> None:
        if (self.answer is None) == (self.handler is None):
            raise ValueError("a fast lane has either an answer or a handler")


FAST_LANE_KEY: Final = web.AppKey("fast_lane", FastLane)


def install_fast_lane(server: web.Server, app: web.Application) -> bool:
    """Put ``app``'s fast lane in front of ``server``'s request handler (before any
    connection is accepted); False when the app has none or the sampler is not rate limited
    (every request is then traced, so none may skip the span)."""
    lane = app.get(FAST_LANE_KEY)
    if lane is None:
        return False
    provider = app[TRACER_PROVIDER_KEY]
    budget = trace_budget(provider.sampler)
    unsampled = unsampled_span_maker(provider)
    if budget is None or unsampled is None:
        return False
    inner: RequestHandler = server.request_handler
    route = lane.route
    metrics, faults, in_flight = app[HTTP_METRICS_KEY], app[FAULTS_KEY], app[IN_FLIGHT_KEY]
    shape = app[ERROR_SHAPE_KEY]
    root = Context()

    def eligible(request: BaseRequest) -> bool:
        """Not part of a trace, no fault to apply, not a quiet route, no ``Expect`` (the
        router's expect handler sends the 100 Continue) (the budget aside)."""
        return (
            _TRACEPARENT not in request.headers
            and _EXPECT not in request.headers
            and not faults.any_active
            and request.path not in QUIET_ROUTES
        )

    async def answer_first(request: BaseRequest) -> web.StreamResponse:
        if eligible(request) and not budget.would_sample():
            assert lane.answer is not None
            started = time.perf_counter()
            try:
                # The app's request factory made it: a web.Request.
                response = lane.answer(cast(web.Request, request))
            except Exception as exc:  # the normal path answers instead, and reports its errors
                _log.warning("fast_answer_failed", error=f"{type(exc).__name__}: {exc}")
                response = None
            if response is not None:
                elapsed = time.perf_counter() - started
                metrics.observe(request.method, route, response.status, elapsed)
                return response
        return await inner(request)

    async def handle_first(request: BaseRequest) -> web.StreamResponse:
        if not eligible(request):
            return await inner(request)
        span = unsampled(root)  # None when the budget would sample a new trace now
        if span is None:
            return await inner(request)
        assert lane.handler is not None
        method = request.method
        if method not in STANDARD_METHODS:
            method = "_OTHER"
        status = 500
        in_flight.enter()
        token = context_api.attach(set_span_in_context(span))
        started = time.perf_counter()
        try:
            response = await error_answer(cast(web.Request, request), lane.handler, shape)
            status = response.status
            return response
        except web.HTTPException as exc:  # a redirect raised by the handler
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            elapsed = time.perf_counter() - started
            # An unsampled span: its line is written for a failure (5xx) only.
            record_request(metrics, request, span, method, route, status, elapsed, None, None)
            context_api.detach(token)
            in_flight.leave()

    server.request_handler = answer_first if lane.answer is not None else handle_first
    return True
