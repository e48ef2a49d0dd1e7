"""The balancer's per-upstream metrics (prefix ``balancer_``), on the app's registry.

``upstream`` is the instance id (bounded: the replicas of one service), ``code`` the status the
instance answered, or ``connect_error`` / ``timeout`` / ``reset`` when it did not answer.
Labelled children are cached per label set so the hot path skips prometheus-client's lookup.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from observability.metrics import DURATION_BUCKETS


class BalancerMetrics:
    """``balancer_upstream_*`` metrics with cached children."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "balancer_upstream_requests_total",
            "Requests sent to an upstream instance, by instance and answer code.",
            ["upstream", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "balancer_upstream_request_duration_seconds",
            "Time from sending a request to an instance until its answer headers arrived.",
            ["upstream"],
            buckets=(0.0005, *DURATION_BUCKETS),
            registry=registry,
        )
        self.active = Gauge(
            "balancer_upstream_active_connections",
            "Requests in flight to an instance (each holds one upstream connection).",
            ["upstream"],
            registry=registry,
        )
        self.healthy = Gauge(
            "balancer_upstream_healthy",
            "1 while an instance receives new requests, 0 while it is out (failing or leaving).",
            ["upstream"],
            registry=registry,
        )
        self.ejections = Counter(
            "balancer_upstream_ejections_total",
            "Times an instance was taken out of rotation, by reason.",
            ["upstream", "reason"],
            registry=registry,
        )
        self.retries = Counter(
            "balancer_upstream_retries_total",
            "Requests retried on another instance after this instance failed them.",
            ["upstream"],
            registry=registry,
        )
        self.no_upstream = Counter(
            "balancer_no_upstream_total",
            "Requests answered 502 without trying, because no instance was known.",
            registry=registry,
        )
        self._requests: dict[tuple[str, str], Counter] = {}
        self._duration: dict[str, Histogram] = {}
        self._active: dict[str, Gauge] = {}

    def request_done(self, upstream: str, code: str, seconds: float) -> None:
        key = (upstream, code)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(upstream, code)
        counter.inc()
        hist = self._duration.get(upstream)
        if hist is None:
            hist = self._duration[upstream] = self.duration.labels(upstream)
        hist.observe(seconds)

    def active_for(self, upstream: str) -> Gauge:
        gauge = self._active.get(upstream)
        if gauge is None:
            gauge = self._active[upstream] = self.active.labels(upstream)
        return gauge
