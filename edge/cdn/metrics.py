"""A PoP's cache metrics (prefix ``cdn_``), on the app's registry.

Hit ratio: ``sum(rate(cdn_cache_requests_total{result=~"hit|stale|revalidated"}[1m])) /
sum(rate(cdn_cache_requests_total[1m]))``. ``result`` is ``hit``, ``miss``, ``stale``,
``revalidated`` or ``pass`` (not cacheable: other methods, ranges). Children are cached so the
hit path skips prometheus-client's label lookup.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edge.cdn.store import CacheStore
from observability.metrics import DURATION_BUCKETS

RESULTS = ("hit", "miss", "stale", "revalidated", "pass")


class CdnMetrics:
    """``cdn_*`` metrics with cached children."""

    def __init__(self, registry: CollectorRegistry, store: CacheStore) -> None:
        requests = Counter(
            "cdn_cache_requests_total",
            "Requests answered by the PoP, by cache result.",
            ["result"],
            registry=registry,
        )
        self.results = {r: requests.labels(r) for r in RESULTS}
        served = Counter(
            "cdn_cache_bytes_served_total",
            "Body bytes sent to clients, by where they came from (cache or origin).",
            ["source"],
            registry=registry,
        )
        self.from_cache = served.labels("cache")
        self.from_origin = served.labels("origin")
        self.origin_requests = Counter(
            "cdn_origin_requests_total",
            "Requests sent to the origin, by answer code (or error / timeout).",
            ["code"],
            registry=registry,
        )
        self._origin_codes: dict[str, Counter] = {}
        self.origin_duration = Histogram(
            "cdn_origin_request_duration_seconds",
            "Time from sending a request to the origin until its answer headers arrived.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        Gauge("cdn_cache_bytes", "Bytes held in the cache.", registry=registry).set_function(
            lambda: store.bytes
        )
        Gauge("cdn_cache_objects", "Objects held in the cache.", registry=registry).set_function(
            lambda: len(store)
        )
        Gauge(
            "cdn_cache_evictions",
            "Objects evicted to stay within the size bound since start.",
            registry=registry,
        ).set_function(lambda: store.evictions)
        self.purged = Counter(
            "cdn_cache_purged_objects_total",
            "Objects removed by purge requests.",
            registry=registry,
        )

    def origin(self, code: str, seconds: float | None) -> None:
        counter = self._origin_codes.get(code)
        if counter is None:
            counter = self._origin_codes[code] = self.origin_requests.labels(code)
        counter.inc()
        if seconds is not None:
            self.origin_duration.observe(seconds)
