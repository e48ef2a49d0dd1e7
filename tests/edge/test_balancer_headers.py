"""The proxy header rules on raw byte pairs (the balancer's client) agree with the multidict
form (the CDN's), and the balancer's metrics expose what prometheus-client's own would."""

from __future__ import annotations

from collections import Counter

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from edge.balancer.headers import (
    RequestHeadWriter,
    ResponseHeaderFilter,
    downstream_response_headers,
    upstream_request_headers,
)
from edge.balancer.metrics import BUCKETS, BalancerMetrics

REQUESTS: list[list[tuple[str, str]]] = [
    [("Host", "shop.example"), ("User-Agent", "ua"), ("Accept", "*/*")],
    [
        ("Host", "shop.example"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-For", "198.51.100.2, 192.0.2.1"),
        ("Via", "1.1 pop-eu"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "cdn.example"),
        ("Cookie", "a=1"),
    ],
    [
        ("Host", "shop.example"),
        ("Connection", "keep-alive, X-Drop"),
        ("X-Drop", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("Proxy-Whatever", "x"),
        ("X-Kept", "yes"),
    ],
    [("Host", "shop.example"), ("Connection", "close"), ("X-Kept", "1"), ("x-kept", "2")],
    [("Connection", "Via, X-Forwarded-For"), ("Via", "1.0 old"), ("X-Forwarded-For", "1.2.3.4")],
    [
        ("Host", "h"),
        ("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
        ("tracestate", "a=b"),
    ],
]


def _request(headers: list[tuple[str, str]]) -> web.Request:
    return make_mocked_request("GET", "/p?q=1", headers=CIMultiDict(headers)).clone(
        remote="10.0.0.7"
    )


def _parse(lines: bytes) -> Counter[tuple[str, str]]:
    assert lines.endswith(b"\r\n")
    fields: Counter[tuple[str, str]] = Counter()
    for line in lines.decode().split("\r\n")[:-1]:
        name, _, value = line.partition(": ")
        fields[(name.lower(), value)] += 1
    return fields


def _fields(headers: CIMultiDict[str]) -> Counter[tuple[str, str]]:
    return Counter((k.lower(), v) for k, v in headers.items())


@pytest.mark.parametrize("headers", REQUESTS)
@pytest.mark.parametrize(
    "inject",
    [{}, {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}],
    ids=["no-span", "span"],
)
def test_raw_request_headers_match_the_multidict_rules(
    headers: list[tuple[str, str]], inject: dict[str, str]
) -> None:
    request = _request(headers)
    expected = upstream_request_headers(request, via="lb")
    expected.update(inject)  # what the propagator's inject into the multidict did
    writer = RequestHeadWriter("lb")
    for _ in range(2):  # first with the names unknown, then remembered
        assert _parse(writer.lines(request, inject)) == _fields(expected)


def test_forwarding_fields_accumulate() -> None:
    lines = RequestHeadWriter("lb").lines(_request(REQUESTS[1]))
    fields = dict(_parse(lines))
    assert ("x-forwarded-for", "203.0.113.9, 198.51.100.2, 192.0.2.1, 10.0.0.7") in fields
    assert ("via", "1.1 pop-eu, 1.1 lb") in fields
    assert ("x-forwarded-proto", "https") in fields
    assert ("x-forwarded-host", "cdn.example") in fields
    assert not any(name == "host" for name, _ in fields)


RESPONSES: list[list[tuple[str, str]]] = [
    [("Content-Type", "text/plain"), ("Content-Length", "5"), ("ETag", '"v1"')],
    [
        ("Connection", "X-Hop, keep-alive"),
        ("X-Hop", "no"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Proxy-Authenticate", "Basic"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Via", "1.1 gw"),
        ("Via", "1.0 other"),
    ],
    [("Connection", "Via"), ("Via", "1.1 gw"), ("X-Value", "caf\u00e9")],
    [("Via", "1.1 gw"), ("Server", "x"), ("via", "1.0 other"), ("Upgrade", "h2c"), ("TE", "x")],
]


@pytest.mark.parametrize("headers", RESPONSES)
def test_raw_response_headers_match_the_multidict_rules(headers: list[tuple[str, str]]) -> None:
    expected = downstream_response_headers(CIMultiDict(headers), via="lb")
    raw = [(k.encode(), v.encode()) for k, v in headers]
    flt = ResponseHeaderFilter("lb")
    for _ in range(2):
        items = flt.items(raw)
        assert Counter((k.lower(), v) for k, v in items) == _fields(expected)


@pytest.mark.parametrize("headers", RESPONSES)
def test_raw_response_lines_are_the_filtered_fields(headers: list[tuple[str, str]]) -> None:
    """``lines`` (the wire lane's bytes; a fast path when no Connection field names more
    fields) gives the fields ``items`` gives, in order, as sent."""
    raw = [(k.encode(), v.encode()) for k, v in headers]
    flt = ResponseHeaderFilter("lb")
    for _ in range(2):  # names learnt on the first pass, remembered on the second
        expected = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in flt.items(raw))
        assert flt.lines(raw) == expected


def test_metrics_expose_what_prometheus_client_would() -> None:
    registry = CollectorRegistry()
    metrics = BalancerMetrics(registry)
    reference = CollectorRegistry()
    histogram = Histogram(
        "balancer_upstream_request_duration_seconds",
        "x",
        ["upstream"],
        buckets=BUCKETS,
        registry=reference,
    )
    samples: list[tuple[str, int | str, float]] = [
        ("a", 200, 0.0003),
        ("a", 200, 0.02),
        ("a", "timeout", 31.0),
        ("b", 503, 0.5),
    ]
    for upstream, code, seconds in samples:
        metrics.instance(upstream).done(code, seconds)
        histogram.labels(upstream).observe(seconds)

    def lines(registry: CollectorRegistry, prefix: str) -> list[str]:
        text = generate_latest(registry).decode()
        return sorted(line for line in text.splitlines() if line.startswith(prefix))

    prefix = "balancer_upstream_request_duration_seconds_"
    assert lines(registry, prefix) == [
        line for line in lines(reference, prefix) if "_created" not in line
    ]
    assert lines(registry, "balancer_upstream_requests_total{") == [
        'balancer_upstream_requests_total{code="200",upstream="a"} 2.0',
        'balancer_upstream_requests_total{code="503",upstream="b"} 1.0',
        'balancer_upstream_requests_total{code="timeout",upstream="a"} 1.0',
    ]
