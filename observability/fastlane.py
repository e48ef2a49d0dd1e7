"""The fast lane: requests answered before routing, when they will not be traced anyway.

A component may give its app a *fast answer* (``FastLane``): a synchronous function that
answers a request at once, or returns None to let it take the normal path (routing, the
telemetry middleware, the handler). It is tried only for a request that would get no span
anyway: no incoming ``traceparent``, the rate-limited sampler out of credit for new traces
just now (``observability.sampling``), and no fault active in the process. Its answers are
counted in the RED metrics under the route they stand in for, like any other request, and get
neither span nor canonical log line, which is what the sampler would have decided for them.

The CDN PoP answers fresh cache hits this way: below the sampler's rate (the experiments'
loads) every hit takes the normal path and is traced; a saturated PoP answers its hits nearly
as cheaply as a bare aiohttp handler (the figure ``load.bench_edge`` measures), since a hit
skips the router, the middleware chain and the span machinery, which together cost more than
the hit itself.

It is installed on the listener's ``web.Server`` (its ``request_handler``, which aiohttp calls
for every request before the app's router) by ``observability.app.run``; tests install it on
their test server with ``install_fast_lane``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, cast

from aiohttp import web
from aiohttp.web_request import BaseRequest

from observability.keys import FAULTS_KEY, HTTP_METRICS_KEY, TRACER_PROVIDER_KEY
from observability.logs import get_logger
from observability.middleware import QUIET_ROUTES
from observability.sampling import trace_budget

__all__ = ["FAST_LANE_KEY", "FastLane", "install_fast_lane"]

_TRACEPARENT: Final = "traceparent"
_log = get_logger("observability.fastlane")

RequestHandler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class FastLane:
    """A fast answer, and the route template its answers are counted under."""

    answer: Callable[[web.Request], web.StreamResponse | None]
    route: str


FAST_LANE_KEY: Final = web.AppKey("fast_lane", FastLane)


def install_fast_lane(server: web.Server, app: web.Application) -> bool:
    """Put ``app``'s fast lane in front of ``server``'s request handler (before any
    connection is accepted); False when the app has none or the sampler is not rate limited
    (every request is then traced, so none may skip the span)."""
    lane = app.get(FAST_LANE_KEY)
    if lane is None:
        return False
    budget = trace_budget(app[TRACER_PROVIDER_KEY].sampler)
    if budget is None:
        return False
    inner: RequestHandler = server.request_handler
    answer, route = lane.answer, lane.route
    metrics, faults = app[HTTP_METRICS_KEY], app[FAULTS_KEY]

    async def handle(request: BaseRequest) -> web.StreamResponse:
        if (
            _TRACEPARENT not in request.headers
            and not faults.any_active
            and not budget.would_sample()
            and request.path not in QUIET_ROUTES
        ):
            started = time.perf_counter()
            try:
                # The app's request factory made it: a web.Request.
                response = answer(cast(web.Request, request))
            except Exception as exc:  # the normal path answers instead, and reports its own errors
                _log.warning("fast_answer_failed", error=f"{type(exc).__name__}: {exc}")
                response = None
            if response is not None:
                elapsed = time.perf_counter() - started
                metrics.observe(request.method, route, response.status, elapsed)
                return response
        return await inner(request)

    server.request_handler = handle
    return True
