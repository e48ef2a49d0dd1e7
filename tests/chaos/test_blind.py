"""Blind localisation on crafted traffic: each fault's signature, a concurrent decoy on a busier
service, no fault at all — and the localiser never told when or where."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from chaos.blind import _baselines, _Event, _rates, localize_blind
from chaos.rcascore import Truth, rank_of
from observability.spans import AttrValue, SpanKind, SpanRecord, SpanStatus

MS = 1_000_000
T0 = 1_700_000_000.0
FAULT_FROM, FAULT_TO, RUN_S = 12.0, 20.0, 34.0
_ids = itertools.count(1)


@dataclass
class Fault:
    """What changes during the fault window, per instance or link (crafted effects)."""

    self_ms: dict[str, float] = field(default_factory=dict)
    """Instance -> extra self time (in-service latency, CPU burn)."""
    error_rate: dict[str, float] = field(default_factory=dict)
    """Instance -> share of its requests failing there."""
    wire_ms: dict[str, float] = field(default_factory=dict)
    """Callee instance -> extra time on the wire for every caller (its proxy)."""
    dead: set[str] = field(default_factory=set)
    """Instances that answer nothing (killed, frozen, cut off)."""
    reset: set[str] = field(default_factory=set)
    """Callee instances whose connections are reset (no answer, at once)."""
    forward_ms: dict[str, float] = field(default_factory=dict)
    """CDN PoP -> extra time on its link to the balancer."""
    forward_down: set[str] = field(default_factory=set)
    """CDN PoPs whose link to the balancer is cut."""
    hang_rate: dict[str, float] = field(default_factory=dict)
    """Instance -> share of its requests that hang until the caller gives up (1 s)."""


def _span(
    trace: str,
    parent: SpanRecord | None,
    instance: str,
    kind: SpanKind,
    start_ms: float,
    end_ms: float,
    name: str,
    *,
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
        service=instance.rsplit("-", 1)[0],
        instance_id=instance,
        start_ns=int((T0 * 1000 + start_ms) * MS),
        end_ns=int((T0 * 1000 + end_ms) * MS),
        attributes=attributes,
        status=SpanStatus.ERROR if error else SpanStatus.UNSET,
    )


def _request(i: int, t: float, pop: str, callee: str, fx: Fault | None) -> list[SpanRecord]:
    """pop (CDN) -> balancer-1 -> gateway-1 -> callee (by RPC: CLIENT then SERVER)."""
    rng = random.Random(i)
    tr = f"{i:x}"
    on = fx is not None and FAULT_FROM <= t < FAULT_TO
    f = fx if on and fx is not None else Fault()
    base = t * 1000.0
    fwd = 1 + rng.uniform(0, 1) + f.forward_ms.get(pop, 0.0)
    if pop in f.forward_down:
        return [_span(tr, None, pop, SpanKind.SERVER, base, base + 2, "GET", error="502")]
    svc_self = 5 + rng.uniform(0, 5) + f.self_ms.get(callee, 0.0)
    wire = 1 + rng.uniform(0, 1) + f.wire_ms.get(callee, 0.0)
    failed = rng.random() < f.error_rate.get(callee, 0.0)
    hung = rng.random() < f.hang_rate.get(callee, 0.0)
    gw_self = 2 + rng.uniform(0, 1)
    c_start = base + fwd + 2 + gw_self / 2
    spans: list[SpanRecord] = []
    error: str | None
    if callee in f.dead or callee in f.reset:
        took = 250.0 if callee in f.dead else 1.0
        c_end = c_start + took
        error = "TimeoutError" if callee in f.dead else "ServerDisconnectedError"
    elif hung:
        svc_self += 1000.0  # the caller's deadline ends it; the server's span ends cancelled
        c_end = c_start + wire + svc_self
        error = "TimeoutError"
    else:
        c_end = c_start + wire + svc_self
        error = "500" if failed else None
    g_end = c_end + gw_self / 2
    b_end = g_end + 1
    p_end = b_end + fwd
    root = _span(tr, None, pop, SpanKind.SERVER, base, p_end, "GET", error=error and "502")
    bal = _span(tr, root, "balancer-1", SpanKind.SERVER, base + fwd, b_end, "GET", error=error)
    gw = _span(tr, bal, "gateway-1", SpanKind.SERVER, base + fwd + 1, g_end, "GET /api",
               error=error)  # fmt: skip
    rpc = "CatalogService/Get" if callee.startswith("catalog") else "PaymentService/Charge"
    client = _span(tr, gw, "gateway-1", SpanKind.CLIENT, c_start, c_end, rpc, error=error,
                   attrs={"testbed.rpc.upstream": callee.rsplit("-", 1)[0],
                          "testbed.rpc.instance": callee})  # fmt: skip
    spans += [root, bal, gw, client]
    if callee not in f.dead and callee not in f.reset:
        s_start = c_start + wire / 2
        spans.append(
            _span(
                tr,
                client,
                callee,
                SpanKind.SERVER,
                s_start,
                s_start + svc_self,
                f"POST /{rpc}",
                error="500" if failed and not hung else None,
            )
        )
    return spans


RATES = {"catalog-1": 6.0, "catalog-2": 24.0, "payments-1": 4.0, "payments-2": 4.0}
"""Requests per second: catalog-2 is the busy one."""


def traffic(fx: Fault | None, *, rates: Mapping[str, float] = RATES) -> list[SpanRecord]:
    spans: list[SpanRecord] = []
    i = 0
    rng = random.Random(7)
    for callee, rate in rates.items():
        t = rng.uniform(0, 1 / rate)
        while t < RUN_S:
            i += 1
            pop = "cdn-sa" if i % 2 else "cdn-us"
            spans += _request(i, t, pop, callee, fx)
            t += rng.expovariate(rate)
    return spans


def _rank(fx: Fault, truth: Truth) -> tuple[int | None, list[str]]:
    result = localize_blind(traffic(fx))
    names = [s.name for s in result.suspects]
    assert result.window is not None, result.reason
    # The window is found without being told: it must overlap the injected one.
    assert result.window.start_s < T0 + FAULT_TO
    assert result.window.end_s > T0 + FAULT_FROM
    return rank_of([s.entity for s in result.suspects], truth), names


def inst(name: str) -> Truth:
    return Truth("instance", instances=frozenset({name}))


CASES = {
    "in-service latency": (Fault(self_ms={"payments-1": 300}), inst("payments-1")),
    "in-service errors": (Fault(error_rate={"catalog-1": 0.5}), inst("catalog-1")),
    "cpu burn (slower self time)": (Fault(self_ms={"catalog-2": 60}), inst("catalog-2")),
    "network latency on one instance": (Fault(wire_ms={"payments-2": 300}), inst("payments-2")),
    "killed / frozen instance": (Fault(dead={"payments-1"}), inst("payments-1")),
    "connection resets on one link": (
        Fault(reset={"catalog-1"}),
        Truth("link", caller="gateway", callees=frozenset({"catalog-1"})),
    ),
    "cdn link latency": (
        Fault(forward_ms={"cdn-sa": 400}),
        Truth("link", caller="cdn-sa", callees=frozenset({"balancer"})),
    ),
    "cdn link down": (
        Fault(forward_down={"cdn-sa"}),
        Truth("link", caller="cdn-sa", callees=frozenset({"balancer"})),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_fault_signature_is_ranked_first(case: str) -> None:
    fx, truth = CASES[case]
    rank, names = _rank(fx, truth)
    assert rank == 1, names


def test_a_milder_slowdown_on_a_busier_service_does_not_outrank_the_fault() -> None:
    # catalog-2 takes six times the requests of payments-1 and slows by 40 ms on each.
    fx = Fault(self_ms={"payments-1": 300, "catalog-2": 40})
    rank, names = _rank(fx, inst("payments-1"))
    assert rank == 1, names
    assert "catalog-2" in names  # the decoy is seen, below the fault


def test_a_few_errors_on_a_busier_service_do_not_outrank_many_on_a_quiet_one() -> None:
    fx = Fault(error_rate={"payments-2": 0.3, "catalog-2": 0.04})
    rank, names = _rank(fx, inst("payments-2"))
    assert rank == 1, names


def test_volume_alone_does_not_decide() -> None:
    # The same slowdown on both: the quiet instance must not lose for having fewer requests.
    fx = Fault(self_ms={"payments-1": 200, "catalog-2": 200})
    result = localize_blind(traffic(fx))
    top = {s.name: s.score for s in result.suspects[:2]}
    assert set(top) == {"payments-1", "catalog-2"}
    assert abs(top["payments-1"] - top["catalog-2"]) < 0.1


def test_no_fault_no_window() -> None:
    result = localize_blind(traffic(None))
    assert result.window is None
    assert result.suspects == ()
    assert rank_of([], inst("payments-1")) is None


def test_too_few_spans_is_undetermined() -> None:
    result = localize_blind(traffic(Fault(self_ms={"payments-1": 300}))[:20])
    assert result.window is None
    assert "too few spans" in result.reason


def _two_callers(spans: list[SpanRecord]) -> list[SpanRecord]:
    """Every other trace goes through gateway-2 instead of gateway-1."""
    out = []
    for s in spans:
        if s.instance_id == "gateway-1" and int(s.trace_id, 16) % 2:
            s = dataclasses.replace(s, instance_id="gateway-2")
        out.append(s)
    return out


def test_a_sparse_instances_ingress_failing_for_every_caller_is_found() -> None:
    # payments-1 takes one call a second, split over two callers: each sees too few failures
    # to be significant alone, together they single the instance out.
    rates = {**RATES, "payments-1": 1.0}
    spans = _two_callers(traffic(Fault(reset={"payments-1"}), rates=rates))
    result = localize_blind(spans)
    truth = Truth("link", caller="gateway", callees=frozenset({"payments-1"}))
    assert rank_of([s.entity for s in result.suspects], truth) == 1, result.suspects[:3]


def test_fewer_shoppers_upstream_explain_the_gateways_missing_requests() -> None:
    # The shoppers send half as much while payments-1 is slow (a closed loop waits): the
    # gateway's missing requests are explained by what reached the balancer before it.
    spans = traffic(Fault(self_ms={"payments-1": 300}))
    root_start = {s.trace_id: s.start_ns / 1e9 - T0 for s in spans if s.parent_span_id is None}
    kept = [
        s
        for s in spans
        if not (FAULT_FROM <= root_start[s.trace_id] < FAULT_TO and int(s.trace_id, 16) % 2)
    ]
    result = localize_blind(kept)
    assert result.suspects
    assert result.suspects[0].name == "payments-1", result.suspects[:3]
    gateway = [s for s in result.suspects if s.name == "gateway-1"]
    assert not any("missing" in e for s in gateway for e in s.evidence), gateway


def test_a_sparse_instance_hanging_half_its_calls_is_found() -> None:
    # payments-1 takes one call a second over two callers; half of them hang until the
    # caller's deadline: a handful of events over the fault, few of them in any one second.
    # (At 30% this traffic holds two hung calls in 8 s: no alarm, by design; see the README.)
    rates = {**RATES, "payments-1": 1.0}
    spans = _two_callers(traffic(Fault(hang_rate={"payments-1": 0.5}), rates=rates))
    result = localize_blind(spans)
    assert result.window is not None, result.reason
    rank = rank_of([s.entity for s in result.suspects], inst("payments-1"))
    assert rank is not None, (result.reason, result.suspects[:3])
    assert rank <= 3, result.suspects[:3]


def test_a_sparse_series_baseline_is_taken_over_time_not_busy_seconds() -> None:
    # Three calls in 6 s before the fault, then callers retry into it: more of its busy seconds
    # are inside the fault than outside, yet the fault holds a third of the time.
    ok, bad = _Event(0.0), _Event(0.0, bad_error=True)
    per_bin = [[ok], [], [], [ok], [], [ok], [bad], [bad, bad], [bad], [bad]]
    assert _rates(per_bin, lambda e: e.bad_error) == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert _rates([[], [], [bad, ok]], lambda e: e.bad_error) == [0.5]
    assert _rates([[], []], lambda e: e.bad_error) == [0.0]


def test_a_scan_is_judged_against_what_came_before_when_that_was_quieter() -> None:
    # One call a second, all fine for 10 s, then every call fails and the callers stop
    # calling: over time the failure rate is the fault's own (the last seen, carried to the
    # end); what came before each second is not.
    counts = [1] * 10 + [1, 1, 1, 1, 1] + [0] * 10
    marks = [0] * 10 + [1, 1, 1, 1, 1] + [0] * 10
    base = _baselines(counts, marks, whole=0.5)
    assert base[:5] == [0.5] * 5  # too few events before: the whole run's rate
    assert base[5:11] == [0.01] * 6  # nothing failed before: the floor
    assert base[12] == pytest.approx(2 / 12)  # two of the twelve before it failed
    assert max(base) == 0.5
