"""The RED metrics kept as plain numbers expose what prometheus-client's own types would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from observability.metrics import DURATION_BUCKETS, HttpMetrics, PlainHistogram

OBSERVATIONS = [
    ("GET", "/orders/{id}", 200, 0.0004),
    ("GET", "/orders/{id}", 200, 0.001),  # on a bound: counted in that bucket ("le")
    ("GET", "/orders/{id}", 404, 0.003),
    ("POST", "/orders", 201, 2.0),
    ("POST", "/orders", 503, 100.0),  # past the last bound: +Inf only
]


def exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(
        line
        for line in text.splitlines()
        if line.startswith("http_server_request") and "_created" not in line
    )


def test_the_exposition_equals_prometheus_clients_own() -> None:
    ours = CollectorRegistry()
    metrics = HttpMetrics.register(ours)
    reference = CollectorRegistry()
    requests = Counter(
        "http_server_requests_total", "x", ["method", "route", "code"], registry=reference
    )
    duration = Histogram(
        "http_server_request_duration_seconds",
        "x",
        ["method", "route"],
        buckets=DURATION_BUCKETS,
        registry=reference,
    )
    for method, route, code, seconds in OBSERVATIONS:
        metrics.observe(method, route, code, seconds)
        requests.labels(method, route, str(code)).inc()
        duration.labels(method, route).observe(seconds)
    ours_lines = [line for line in exposition(ours) if "in_flight" not in line]
    assert ours_lines == exposition(reference)
    assert (
        ours.get_sample_value(
            "http_server_requests_total", {"method": "GET", "route": "/orders/{id}", "code": "200"}
        )
        == 2.0
    )


def test_plain_histogram_buckets_are_le_and_cumulative() -> None:
    histogram = PlainHistogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 5.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.sum == 5.65
