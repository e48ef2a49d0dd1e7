"""Fault localisation on crafted traffic: a slow link, errors deep down, a killed instance,
too little data — and the scoring against the injected fault."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from chaos.localize import (
    FaultTruth,
    Window,
    binomial_surprise,
    localize,
    localize_journal,
    summary_lines,
    truths_from_journal,
    wait_for_span_files,
)
from observability.spans import AttrValue, SpanKind, SpanRecord, SpanStatus

MS = 1_000_000
T0 = 1_700_000_000.0  # wall-clock seconds of the crafted run's start
_ids = itertools.count(1)

# (start s, orders instance, payments instance) -> how that request went
Effect = Callable[[float, str, str], dict[str, Any]]


def _span(
    trace: str,
    parent: SpanRecord | None,
    service: str,
    instance: str,
    kind: SpanKind,
    start_ms: float,
    end_ms: float,
    *,
    name: str,
    error: str | None = None,
    attrs: Mapping[str, AttrValue] | None = None,
) -> SpanRecord:
    attributes: dict[str, AttrValue] = dict(attrs or {})
    if error is not None:
        attributes["error.type"] = error
    return SpanRecord(
        trace_id=trace.rjust(32, "0"),
        span_id=f"{next(_ids):016x}",
        parent_span_id=parent.span_id if parent else None,
        name=name,
        kind=kind,
        service=service,
        instance_id=instance,
        start_ns=int((T0 * 1000 + start_ms) * MS),
        end_ns=int((T0 * 1000 + end_ms) * MS),
        attributes=attributes,
        status=SpanStatus.ERROR if error else SpanStatus.UNSET,
    )


def request(
    i: int, t: float, orders: str, payments: str, fx: Mapping[str, Any]
) -> list[SpanRecord]:
    """gateway -> orders-N -> payments-N, with the effects ``fx`` of a fault."""
    tr = f"{i:x}"
    rng = random.Random(i)
    base = t * 1000.0
    jitter = rng.uniform(0, 3)
    pay_self = 20 + rng.uniform(0, 10) + fx.get("pay_extra_ms", 0.0)
    wire = 1 + rng.uniform(0, 2) + fx.get("wire_ms", 0.0)
    pay_err = fx.get("pay_error")
    o_start = base + 5
    spans: list[SpanRecord] = []
    gw = _span(tr, None, "gateway", "gateway-1", SpanKind.SERVER, base, base + 1,
               name="POST /api/checkout")  # fmt: skip
    gw_c_start = base + 2
    if fx.get("orders_dead"):
        gw_c = _span(tr, gw, "gateway", "gateway-1", SpanKind.CLIENT, gw_c_start, gw_c_start + 1,
                     name="OrderService/PlaceOrder", error="ClientConnectorError",
                     attrs={"testbed.rpc.upstream": "orders",
                            "testbed.rpc.instance": orders})  # fmt: skip
        gw = _replace_end(gw, gw_c.end_ns + MS, error="ClientConnectorError")
        return [gw, gw_c]
    o_c_start = o_start + 3 + jitter
    pay_start = o_c_start + wire / 2
    pay_end = pay_start + pay_self
    o_c_end = pay_end + wire / 2
    o_end = o_c_end + 2
    gw_c_end = o_end + 1
    gw_c = _span(tr, gw, "gateway", "gateway-1", SpanKind.CLIENT, gw_c_start, gw_c_end,
                 name="OrderService/PlaceOrder", error="500" if pay_err else None,
                 attrs={"testbed.rpc.upstream": "orders"})  # fmt: skip
    o = _span(tr, gw_c, "orders", orders, SpanKind.SERVER, o_start, o_end,
              name="POST /OrderService/PlaceOrder", error="500" if pay_err else None)  # fmt: skip
    o_c = _span(tr, o, "orders", orders, SpanKind.CLIENT, o_c_start, o_c_end,
                name="PaymentService/Charge", error="500" if pay_err else None,
                attrs={"testbed.rpc.upstream": "payments"})  # fmt: skip
    pay = _span(tr, o_c, "payments", payments, SpanKind.SERVER, pay_start, pay_end,
                name="POST /PaymentService/Charge", error=pay_err)  # fmt: skip
    gw = _replace_end(gw, gw_c.end_ns + MS, error="500" if pay_err else None)
    spans += [gw, gw_c, o, o_c, pay]
    return spans


def _replace_end(span: SpanRecord, end_ns: int, *, error: str | None) -> SpanRecord:
    attrs = dict(span.attributes)
    if error:
        attrs["error.type"] = error
    return SpanRecord(
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_span_id=span.parent_span_id,
        name=span.name,
        kind=span.kind,
        service=span.service,
        instance_id=span.instance_id,
        start_ns=span.start_ns,
        end_ns=end_ns,
        attributes=attrs,
        status=SpanStatus.ERROR if error else SpanStatus.UNSET,
    )


BASELINE = Window(T0, T0 + 10)
FAULT = Window(T0 + 11, T0 + 21)


def traffic(
    effect: Effect | None = None, *, rate: float = 5.0, until: float = 22.0
) -> list[SpanRecord]:
    """Requests at ``rate``/s for ``until`` s; ``effect`` shapes those in the fault window."""
    spans: list[SpanRecord] = []
    n = int(until * rate)
    for i in range(n):
        t = i / rate
        orders = f"orders-{1 + i % 2}"
        payments = f"payments-{1 + (i // 2) % 2}"
        fx = effect(t, orders, payments) if effect and FAULT.holds(int((T0 + t) * 1e9)) else {}
        spans += request(i, t, orders, payments, fx)
    return spans


def truth(instance: str, service: str, kind: str = "network.latency") -> FaultTruth:
    return FaultTruth(
        fault_id="1-f",
        type=kind,
        target=f"service {service}",
        instances=(instance,),
        services=(service,),
        window=Window(FAULT.start_s + 1.0, FAULT.end_s),  # localize opens it 1 s earlier
    )


def test_latency_on_a_link_is_located_at_its_callee() -> None:
    spans = traffic(lambda t, o, p: {"wire_ms": 300.0} if p == "payments-1" else {})
    (result,) = localize(spans, [truth("payments-1", "payments")], BASELINE)
    assert result.status == "located", result.suspects
    assert (result.rank, result.score, result.label) == (1, 1.0, "yes (#1)")
    top = result.suspects[0]
    assert (top.component, top.where) == ("payments-1", "network")
    assert "slow on the wire" in top.evidence[0]


def test_errors_deep_in_the_chain_are_located_where_they_start() -> None:
    spans = traffic(lambda t, o, p: {"pay_error": "500"} if p == "payments-2" else {})
    (result,) = localize(spans, [truth("payments-2", "payments", "service.error_rate")], BASELINE)
    assert result.label == "yes (#1)", result.suspects
    top = result.suspects[0]
    assert (top.component, top.where) == ("payments-2", "in-service")
    assert "failed here" in top.evidence[0]
    # The callers passed the error on; they are not blamed for it.
    assert all(s.service == "payments" for s in result.suspects)


def test_in_service_latency_is_located_from_self_time() -> None:
    spans = traffic(lambda t, o, p: {"pay_extra_ms": 250.0} if p == "payments-2" else {})
    (result,) = localize(spans, [truth("payments-2", "payments", "service.latency")], BASELINE)
    assert result.label == "yes (#1)"
    assert result.suspects[0].where == "in-service"
    assert "slow in their own time" in result.suspects[0].evidence[0]


def test_a_killed_instance_is_located_from_calls_nobody_answered() -> None:
    spans = traffic(lambda t, o, p: {"orders_dead": True} if o == "orders-2" and t < 13 else {})
    (result,) = localize(spans, [truth("orders-2", "orders", "process.kill")], BASELINE)
    assert result.label == "yes (#1)", result.suspects
    top = result.suspects[0]
    assert top.where == "network"
    assert "no answer" in top.evidence[0]
    assert "ClientConnectorError" in top.evidence[0]


def test_a_wrong_truth_is_scored_by_its_rank_or_absence() -> None:
    spans = traffic(
        lambda t, o, p: (
            {"wire_ms": 300.0}
            if p == "payments-1"
            else ({"pay_extra_ms": 100.0} if p == "payments-2" else {})
        )
    )
    second, absent = localize(
        spans, [truth("payments-2", "payments"), truth("inventory-1", "inventory")], BASELINE
    )
    assert (second.status, second.rank, second.score, second.label) == (
        "not_located",
        2,
        0.5,
        "no (#2)",
    )
    assert (absent.status, absent.rank, absent.score, absent.label) == (
        "not_located",
        None,
        0.0,
        "no (absent)",
    )


def test_too_few_spans_is_undetermined_not_a_guess() -> None:
    spans = traffic(lambda t, o, p: {"wire_ms": 300.0}, rate=0.3)
    (result,) = localize(spans, [truth("payments-1", "payments")], BASELINE)
    assert result.status == "undetermined"
    assert result.label == "undetermined"
    assert (result.rank, result.score) == (None, 0.0)
    assert "too few spans" in result.reason


def test_no_deviation_is_undetermined() -> None:
    (result,) = localize(traffic(None), [truth("payments-1", "payments")], BASELINE)
    assert result.status == "undetermined"
    assert "no instance deviated" in result.reason


def test_binomial_surprise() -> None:
    assert binomial_surprise(0, 10, 0.1) == 0.0
    assert binomial_surprise(1, 1, 0.5) == pytest.approx(0.30103, abs=1e-4)
    assert binomial_surprise(10, 10, 0.01) == pytest.approx(20.0, abs=0.01)
    assert binomial_surprise(5, 100, 0.05) < 1.0  # as expected: no surprise


def journal_data() -> dict[str, Any]:
    return {
        "timeline": [
            {"phase": "preflight", "start": T0 - 1, "end": T0},
            {"phase": "steady-state-before", "start": T0, "end": T0 + 0.1},
            {"phase": "method", "start": T0 + 0.1, "end": T0 + 22},
        ],
        "faults": [
            {
                "id": "1-slow",
                "type": "network.latency",
                "target": "service payments",
                "units": [
                    {
                        "id": "payments-1",
                        "proxy": "payments-1",
                        "instance": {"service": "payments", "instance_id": "payments-1"},
                    }
                ],
                "applied_at": FAULT.start_s + 1.0,
                "rolled_back_at": FAULT.end_s,
            },
            {
                "id": "2-never",
                "type": "process.kill",
                "target": "service orders",
                "units": [],
                "applied_at": None,
            },
        ],
    }


def test_journal_section_has_truth_rank_score_and_suspects() -> None:
    data = journal_data()
    truths, baseline = truths_from_journal(data)
    assert [t.fault_id for t in truths] == ["1-slow"]  # never applied: nothing to locate
    assert baseline == Window(T0, FAULT.start_s)  # ends one export interval before the fault
    assert truths[0].instances == ("payments-1",)
    spans = traffic(lambda t, o, p: {"wire_ms": 300.0} if p == "payments-1" else {})
    section = localize_journal(data, spans)
    assert section is not None
    json.dumps(section)  # it goes into the journal as is
    assert section["headline"] == "yes (#1)"
    assert (section["located"], section["decided"], section["of"], section["score"]) == (
        1,
        1,
        1,
        1.0,
    )
    (fault,) = section["faults"]
    assert fault["truth"]["instances"] == ["payments-1"]
    assert fault["suspects"][0]["component"] == "payments-1"
    assert fault["suspects"][0]["evidence"]
    lines = summary_lines(section)
    assert lines[0].startswith("fault 1-slow on payments-1: located yes (#1)")
    assert localize_journal({"faults": [], "timeline": []}, spans) is None


def test_a_link_without_client_spans_counts_its_caller() -> None:
    link = FaultTruth(
        "1-l", "network.latency", "link cdn-sa->balancer", links=("cdn-sa->balancer",)
    )
    from chaos.localize import Suspect, _matches

    assert _matches(Suspect("cdn-sa", "cdn", "in-service", 5.0, ()), link)
    assert _matches(Suspect("balancer-1", "balancer", "network", 5.0, ()), link)
    assert not _matches(Suspect("balancer-1", "balancer", "in-service", 5.0, ()), link)
    assert not _matches(Suspect("cdn-us", "cdn", "in-service", 5.0, ()), link)


async def test_waiting_for_span_files_is_bounded(tmp_path: Path) -> None:
    import time

    (tmp_path / "a.jsonl").write_text("{}\n")
    started = time.monotonic()
    await wait_for_span_files(tmp_path, not_before=time.time(), quiet_s=0.3, within_s=3.0)
    assert time.monotonic() - started < 2.0
