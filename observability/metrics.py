"""RED metrics of the HTTP server and the ``/metrics`` endpoint, on a registry passed in.

Names are shared by every process: ``http_server_requests_total{method,route,code}``,
``http_server_request_duration_seconds{method,route}`` and ``http_server_requests_in_flight``.
``route`` is the route template (``/orders/{id}``), never the raw path; requests that match no
route are labelled ``unmatched``. ``/metrics`` is prometheus-client's own aiohttp handler.
The labelled children are cached per (method, route, code), so recording a request skips
prometheus-client's label lookup (the label sets are few: route templates, never paths).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler

__all__ = [
    "DURATION_BUCKETS",
    "MAX_CACHED_CHILDREN",
    "UNMATCHED",
    "HttpMetrics",
    "metrics_handler",
    "route_template",
]

UNMATCHED = "unmatched"
MAX_CACHED_CHILDREN = 4096
"""Bound of the children cache (label sets past it are looked up each time)."""
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@dataclass(frozen=True)
class HttpMetrics:
    """The RED metrics of one app's HTTP server."""

    requests: Counter
    duration: Histogram
    in_flight: Gauge
    _children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def register(cls, registry: CollectorRegistry) -> HttpMetrics:
        return cls(
            requests=Counter(
                "http_server_requests_total",
                "HTTP requests handled, by method, route template and status code.",
                ["method", "route", "code"],
                registry=registry,
            ),
            duration=Histogram(
                "http_server_request_duration_seconds",
                "Time to answer an HTTP request, by method and route template.",
                ["method", "route"],
                buckets=DURATION_BUCKETS,
                registry=registry,
            ),
            in_flight=Gauge(
                "http_server_requests_in_flight",
                "HTTP requests being handled right now.",
                registry=registry,
            ),
        )

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        key = (method, route, code)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(code)),
                self.duration.labels(method, route),
            )
            if len(self._children) < MAX_CACHED_CHILDREN:
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


def route_template(request: web.Request) -> str:
    """The matched route's template (``/orders/{id}``), or ``unmatched``."""
    match_info = request.match_info
    resource = match_info.route.resource if match_info is not None else None
    if resource is None:
        return UNMATCHED
    return resource.canonical


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """The ``/metrics`` handler for ``registry`` (Prometheus text or OpenMetrics)."""
    return make_aiohttp_handler(registry)
