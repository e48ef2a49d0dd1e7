"""RED metrics of the HTTP server and the ``/metrics`` endpoint, on a registry passed in.

Names are shared by every process: ``http_server_requests_total{method,route,code}``,
``http_server_request_duration_seconds{method,route}`` and ``http_server_requests_in_flight``.
``route`` is the route template (``/orders/{id}``), never the raw path; requests that match no
route are labelled ``unmatched``. ``/metrics`` is prometheus-client's own aiohttp handler.
The counts are plain numbers turned into Prometheus families at scrape time (see
``HttpMetrics``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = [
    "DURATION_BUCKETS",
    "UNMATCHED",
    "HttpMetrics",
    "PlainHistogram",
    "metrics_handler",
    "route_template",
]

UNMATCHED = "unmatched"
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


class PlainHistogram:
    """A histogram's observations as plain numbers: per-bucket counts (not cumulative, the
    last one +Inf) and the sum. ``observe`` is a ``bisect`` and two additions."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(self.bounds, seconds)] += 1  # "le": first bound >= value
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as a ``HistogramMetricFamily`` sample takes them."""
        pairs: list[tuple[str, float]] = []
        total = 0
        for le, count in zip(
            [*map(floatToGoString, self.bounds), "+Inf"], self.buckets, strict=True
        ):
            total += count
            pairs.append((le, total))
        return pairs


_REQUESTS = "http_server_requests_total"
_REQUESTS_HELP = "HTTP requests handled, by method, route template and status code."
_DURATION = "http_server_request_duration_seconds"
_DURATION_HELP = "Time to answer an HTTP request, by method and route template."


class HttpMetrics:
    """The RED metrics of one app's HTTP server.

    Every request of every process records them, so they are kept as plain numbers per label
    set (a dict increment and a ``bisect``, ~0.3 us; a labelled ``Counter.inc`` plus
    ``Histogram.observe`` cost ~1.5 us: a lock per value and a Python loop over the buckets)
    and turned into the Prometheus families when scraped, by a collector on the same registry
    (prometheus-client's custom-collector API). Requests and scrapes both run on the event
    loop's thread, so the numbers need no lock. The label sets are bounded: methods are the
    standard ones or ``_OTHER``, routes are templates, codes are HTTP statuses.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests: dict[tuple[str, str, int], int] = {}
        self._durations: dict[tuple[str, str], PlainHistogram] = {}
        registry.register(_RedCollector(self._requests, self._durations))
        self.in_flight = Gauge(
            "http_server_requests_in_flight",
            "HTTP requests being handled right now.",
            registry=registry,
        )

    @classmethod
    def register(cls, registry: CollectorRegistry) -> HttpMetrics:
        return cls(registry)

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        key = (method, route, code)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        histogram = self._durations.get((method, route))
        if histogram is None:
            histogram = self._durations[(method, route)] = PlainHistogram(DURATION_BUCKETS)
        histogram.observe(seconds)


class _RedCollector:
    """Exposes ``HttpMetrics``' numbers as the two Prometheus families."""

    def __init__(
        self,
        requests: dict[tuple[str, str, int], int],
        durations: dict[tuple[str, str], PlainHistogram],
    ) -> None:
        self._requests = requests
        self._durations = durations

    def describe(self) -> list[Metric]:
        return [
            CounterMetricFamily(_REQUESTS, _REQUESTS_HELP, labels=["method", "route", "code"]),
            HistogramMetricFamily(_DURATION, _DURATION_HELP, labels=["method", "route"]),
        ]

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            _REQUESTS, _REQUESTS_HELP, labels=["method", "route", "code"]
        )
        for (method, route, code), count in list(self._requests.items()):
            requests.add_metric([method, route, str(code)], count)
        duration = HistogramMetricFamily(_DURATION, _DURATION_HELP, labels=["method", "route"])
        for (method, route), histogram in list(self._durations.items()):
            duration.add_metric([method, route], histogram.cumulative(), histogram.sum)
        yield requests
        yield duration


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
