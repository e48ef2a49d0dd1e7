"""Trace analysis on crafted spans: traces, calls, the service map, hop counts, self time."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping

import pytest

from observability.analysis import (
    assemble,
    calls,
    entry_route,
    hop_count,
    hop_distribution,
    percentile,
    self_time_ns,
    self_times,
    service_map,
)
from observability.spans import AttrValue, SpanKind, SpanRecord, SpanStatus

MS = 1_000_000
_ids = itertools.count(1)


def span(
    trace: str,
    parent: SpanRecord | None,
    service: str,
    kind: SpanKind,
    start_ms: float,
    end_ms: float,
    *,
    name: str = "op",
    instance: str | None = None,
    error: bool = False,
    attrs: Mapping[str, AttrValue] | None = None,
) -> SpanRecord:
    return SpanRecord(
        trace_id=trace.rjust(32, "0"),
        span_id=f"{next(_ids):016x}",
        parent_span_id=parent.span_id if parent else None,
        name=name,
        kind=kind,
        service=service,
        instance_id=instance or f"{service}-1",
        start_ns=int(start_ms * MS),
        end_ns=int(end_ms * MS),
        attributes=dict(attrs or {}),
        status=SpanStatus.ERROR if error else SpanStatus.UNSET,
    )


def checkout(trace: str, *, payments_wire_ms: float = 1.0) -> list[SpanRecord]:
    """cdn -> balancer (no CLIENT spans) -> gateway -> orders -> payments (RPC)."""
    cdn = span(trace, None, "cdn", SpanKind.SERVER, 0, 100, name="POST /{tail}",
               attrs={"http.route": "/{tail}"})  # fmt: skip
    lb = span(trace, cdn, "balancer", SpanKind.SERVER, 5, 95, name="POST /{tail}",
              attrs={"http.route": "/{tail}"})  # fmt: skip
    gw = span(trace, lb, "gateway", SpanKind.SERVER, 10, 90, name="POST /api/checkout",
              attrs={"http.route": "/api/checkout"})  # fmt: skip
    gw_c = span(trace, gw, "gateway", SpanKind.CLIENT, 20, 80, name="OrderService/PlaceOrder",
                attrs={"testbed.rpc.upstream": "orders", "server.address": "127.0.0.1",
                       "server.port": 7001})  # fmt: skip
    orders = span(trace, gw_c, "orders", SpanKind.SERVER, 22, 78)
    o_c = span(trace, orders, "orders", SpanKind.CLIENT, 30, 60 + payments_wire_ms,
               attrs={"testbed.rpc.upstream": "payments"})  # fmt: skip
    pay = span(trace, o_c, "payments", SpanKind.SERVER, 31, 60, instance="payments-2")
    return [cdn, lb, gw, gw_c, orders, o_c, pay]


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([5.0], 99) == 5.0


def test_assemble_links_parents_children_and_roots() -> None:
    spans = checkout("a") + checkout("b")
    traces = assemble(reversed(spans))
    assert [t.trace_id[-1] for t in traces] == ["a", "b"]
    t = traces[0]
    assert t.root.service == "cdn"
    assert len(t.roots) == 1
    gw = next(s for s in t.spans if s.name == "POST /api/checkout")
    assert [c.kind for c in t.children_of(gw)] == [SpanKind.CLIENT]
    assert t.parent(gw) is not None
    assert t.parent(gw).service == "balancer"  # type: ignore[union-attr]


def test_calls_link_client_to_server_and_count_propagated_hops() -> None:
    hops = calls(assemble(checkout("a", payments_wire_ms=40)))
    assert [(c.caller, c.callee) for c in hops] == [
        ("cdn", "balancer"),
        ("balancer", "gateway"),
        ("gateway", "orders"),
        ("orders", "payments"),
    ]
    to_payments = hops[-1]
    assert to_payments.callee_instance == "payments-2"
    assert to_payments.wire_s == pytest.approx(0.041)
    assert hops[0].client is None
    assert hops[0].wire_s is None  # no CLIENT span: the wire is not measurable


def test_unanswered_call_is_named_from_attributes_or_known_addresses() -> None:
    ok = checkout("a")
    gw = ok[2]
    lost = span("b", None, "gateway", SpanKind.SERVER, 0, 10, name="POST /api/checkout")
    by_hint = span("b", lost, "gateway", SpanKind.CLIENT, 1, 2, error=True,
                   attrs={"testbed.rpc.upstream": "orders", "testbed.rpc.instance": "orders-3",
                          "error.type": "ClientConnectorError"})  # fmt: skip
    by_address = span("b", lost, "gateway", SpanKind.CLIENT, 3, 4, error=True,
                      attrs={"testbed.rpc.upstream": "orders",
                             "testbed.rpc.instance": "orders@127.0.0.1:7001",
                             "server.address": "127.0.0.1", "server.port": 7001,
                             "error.type": "ServerDisconnectedError"})  # fmt: skip
    hops = [c for c in calls(assemble([*ok, lost, by_hint, by_address])) if not c.answered]
    assert gw.service == "gateway"
    assert [(c.callee, c.callee_instance, c.error_type) for c in hops] == [
        ("orders", "orders-3", "ClientConnectorError"),
        ("orders", "orders-1", "ServerDisconnectedError"),  # learnt from trace a
    ]


def test_service_map_counts_errors_and_latency_per_edge() -> None:
    spans = []
    for i in range(10):
        spans += checkout(f"{i}", payments_wire_ms=1 + i)
    failing = checkout("x")
    failing[5] = span("x", failing[4], "orders", SpanKind.CLIENT, 30, 35, error=True,
                      attrs={"testbed.rpc.upstream": "payments",
                             "error.type": "timeout"})  # fmt: skip
    smap = service_map(assemble(spans + failing[:6]))
    edges = {(e.caller, e.callee): e for e in smap.edges}
    pay = edges[("orders", "payments")]
    assert (pay.calls, pay.errors) == (11, 1)
    assert pay.p50_ms == pytest.approx(35.0)
    assert pay.p99_ms == pytest.approx(40.0)
    assert edges[("gateway", "orders")].errors == 0
    assert smap.depth == {"cdn": 0, "balancer": 1, "gateway": 2, "orders": 3, "payments": 4}
    assert smap.services["payments"] == 10
    assert smap.to_json()["edges"]


def test_hop_count_and_distribution_per_entry_route() -> None:
    t = assemble(checkout("a"))[0]
    assert hop_count(t) == 4
    assert entry_route(t) == "POST /api/checkout"  # not the CDN's catch-all route
    hit = span("h", None, "cdn", SpanKind.SERVER, 0, 1, name="GET /{tail}",
               attrs={"http.route": "/{tail}"})  # fmt: skip
    root = span("k", None, "gateway", SpanKind.SERVER, 0, 10, name="GET /api/products")
    dead = span("k", root, "gateway", SpanKind.CLIENT, 1, 2, error=True)
    dist = hop_distribution(assemble([*checkout("a"), *checkout("b"), hit, root, dead]))
    assert dist == {
        "POST /api/checkout": Counter({4: 2}),
        "GET /{tail} (at cdn)": Counter({0: 1}),
        "GET /api/products": Counter({1: 1}),  # a call that never reached its callee
    }


def test_self_time_subtracts_overlapping_children_once() -> None:
    parent = span("p", None, "gateway", SpanKind.SERVER, 0, 100)
    kids = [
        span("p", parent, "gateway", SpanKind.CLIENT, 10, 40),
        span("p", parent, "gateway", SpanKind.CLIENT, 20, 50),  # overlaps the first
        span("p", parent, "gateway", SpanKind.CLIENT, 90, 130),  # runs past the parent
    ]
    assert self_time_ns(parent, kids) == (100 - 40 - 10) * MS
    assert self_time_ns(parent, []) == 100 * MS


def test_self_times_attribute_wire_time_to_the_link() -> None:
    spans = checkout("a", payments_wire_ms=300)
    by = {s.component: s for s in self_times(assemble(spans))}
    assert by["orders->payments (wire)"].total_s == pytest.approx(0.301)
    assert by["payments"].total_s == pytest.approx(0.029)
    assert self_times(assemble(spans))[0].component == "orders->payments (wire)"
    per_instance = {s.component for s in self_times(assemble(spans), by_instance=True)}
    assert "orders-1->payments-2 (wire)" in per_instance
