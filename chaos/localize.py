"""Locate an injected fault from traces alone, and score that against what was injected.

The spans of a run are split into a *baseline* window (before the first fault) and each
fault's window (from applied to rolled back). Every instance then gets up to four signals,
each a count of anomalous events in the fault window out of the events there:

- **slow on the wire** (network, towards the instance): calls whose time on the wire — the
  caller's CLIENT span minus the callee's SERVER span — exceeds what the baseline showed for
  that callee service. Each instance sits behind its own Toxiproxy proxy, so latency injected
  on the proxy shows up here, attributed to the callee.
- **no answer** (network, towards the instance): calls whose callee recorded nothing — a
  killed or cut instance (connection refused or reset; ``error.type`` says which).
- **slow inside** (in-service): SERVER spans whose self time (duration minus the time spent in
  calls to other processes) exceeds the baseline of that service and route.
- **errors raised here** (in-service): SERVER spans that failed while none of their own calls
  did — where an error started, not where it was passed on.

Each signal is scored by how surprising its count is given the baseline rate (the binomial
tail probability, as ``-log10 p``), and an instance's score is the sum of its signals.
Suspects are ranked by score, each with one line of evidence per signal.

Scoring against the truth: the fault's units (from the journal) are the truth; its *rank* is
the position of the best-ranked suspect that matches it (an instance of the fault; for a
service-wide fault, any instance of the service; for a link without CLIENT spans — the CDN's
link to the balancer — the caller instance, whose self time holds the link's time, or a
network suspect on the callee side). ``located`` is ``yes`` when that rank is 1, the score is
``1/rank`` (0 when absent). With too few spans, or no instance deviating significantly, the
result is ``undetermined`` rather than a guess.

The binomial tail is computed here (log-space sum) rather than importing SciPy for one
function.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from observability.analysis import Call, Trace, assemble, calls, percentile
from observability.spans import SpanKind, SpanRecord, load_spans, span_files

__all__ = [
    "FaultTruth",
    "Localization",
    "Suspect",
    "Window",
    "binomial_surprise",
    "headline",
    "localize",
    "localize_journal",
    "localize_run",
    "summary_lines",
    "truths_from_journal",
    "wait_for_span_files",
]

MIN_BASELINE_SPANS = 20
MIN_FAULT_SPANS = 20
SIGNIFICANT = 3.0
"""A suspect needs a score of at least this (``p < 0.001``) for a verdict."""
MIN_EVENTS = 2
MAX_SURPRISE = 40.0
SLOW_FACTOR = 1.5
SLOW_MARGIN_MS = 10.0
BASE_RATE_FLOOR = 0.002
LOST_RATE_FLOOR = 0.001
ONSET_S = 5.0
"""Signals are also judged over a fault's first seconds: a killed instance is back quickly."""
EXPORT_LEAD_S = 1.0
"""Fault windows open this much before the fault: a killed process loses the spans it had not
exported yet (one export interval), which shows as calls its callers made just before."""
REGISTER_ROUTE_SUFFIX = "/instances/{instance_id}"
RESTART_RATE_FLOOR = 1e-4
"""Expected registrations per instance per window when the baseline saw none."""
CANCELLED = frozenset({"cancelled", "499"})
"""``error.type`` of requests the caller abandoned: not an error the server raised."""
TOP_SUSPECTS = 5

Where = Literal["network", "in-service"]
Status = Literal["located", "not_located", "undetermined"]


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float

    def holds(self, ns: int) -> bool:
        return self.start_s <= ns / 1e9 < self.end_s


@dataclass(frozen=True)
class FaultTruth:
    """What was injected, where and when (from the journal)."""

    fault_id: str
    type: str
    target: str
    """As the experiment wrote it, e.g. ``service payments``."""
    instances: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    """``caller->callee`` units of link faults (e.g. ``cdn-sa->balancer``)."""
    window: Window = Window(0.0, 0.0)

    def describe(self) -> str:
        return ", ".join((*self.instances, *self.links)) or self.target


@dataclass(frozen=True)
class Suspect:
    component: str
    """An instance id (the service's name when the instance is unknown)."""
    service: str
    where: Where
    score: float
    evidence: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "service": self.service,
            "where": self.where,
            "score": round(self.score, 2),
            "evidence": list(self.evidence),
        }


@dataclass(frozen=True)
class Localization:
    fault: FaultTruth
    status: Status
    rank: int | None
    score: float
    suspects: tuple[Suspect, ...]
    reason: str
    baseline_spans: int
    fault_spans: int

    @property
    def label(self) -> str:
        """``yes (#1)``, ``no (#3)``, ``no (absent)`` or ``undetermined``."""
        if self.status == "undetermined":
            return "undetermined"
        if self.rank is None:
            return "no (absent)"
        return f"{'yes' if self.rank == 1 else 'no'} (#{self.rank})"

    def to_json(self) -> dict[str, Any]:
        f = self.fault
        return {
            "fault_id": f.fault_id,
            "type": f.type,
            "truth": {
                "target": f.target,
                "instances": list(f.instances),
                "services": list(f.services),
                "links": list(f.links),
            },
            "window": {"start": f.window.start_s, "end": f.window.end_s},
            "status": self.status,
            "located": self.label,
            "rank": self.rank,
            "score": round(self.score, 3),
            "reason": self.reason,
            "spans": {"baseline": self.baseline_spans, "fault": self.fault_spans},
            "suspects": [s.to_json() for s in self.suspects[:TOP_SUSPECTS]],
        }


# -- statistics ------------------------------------------------------------------------------


def binomial_surprise(k: int, n: int, p: float) -> float:
    """``-log10 P(X >= k)`` for ``X ~ Binomial(n, p)``: how surprising ``k`` events are."""
    if k <= 0 or n <= 0:
        return 0.0
    if p <= 0.0:
        return MAX_SURPRISE
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * log_p
        + (n - i) * log_q
        for i in range(k, n + 1)
    ]
    top = max(terms)
    log_tail = top + math.log(sum(math.exp(t - top) for t in terms))
    return min(MAX_SURPRISE, max(0.0, -log_tail / math.log(10)))


def _base_rate(k: int, n: int, *, floor: float = BASE_RATE_FLOOR) -> float:
    """The baseline's rate of an event, smoothed, and never below ``floor``."""
    return max(floor, (k + 0.5) / (n + 1.0))


def _threshold_ms(baseline: Sequence[float]) -> float | None:
    p95 = percentile(baseline, 95)
    return None if p95 is None else p95 * SLOW_FACTOR + SLOW_MARGIN_MS


# -- what each span or call says -------------------------------------------------------------


@dataclass(frozen=True)
class _ServerSpan:
    span: SpanRecord
    self_ms: float
    origin_error: bool
    error_type: str | None


def _outgoing(trace: Trace, span: SpanRecord) -> list[SpanRecord]:
    """Spans in ``span``'s subtree that leave its process (CLIENT spans, remote children)."""
    out: list[SpanRecord] = []
    stack = list(trace.children_of(span))
    while stack:
        child = stack.pop()
        if child.kind is SpanKind.CLIENT or child.instance_id != span.instance_id:
            out.append(child)
        else:
            stack.extend(trace.children_of(child))
    return out


def _covered_ns(span: SpanRecord, others: Iterable[SpanRecord]) -> int:
    intervals = sorted(
        (max(o.start_ns, span.start_ns), min(o.end_ns, span.end_ns))
        for o in others
        if o.end_ns > span.start_ns and o.start_ns < span.end_ns
    )
    covered, cur_start, cur_end = 0, -1, -1
    for start, end in intervals:
        if start > cur_end:
            covered += max(0, cur_end - cur_start)
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return covered + max(0, cur_end - cur_start)


def _span_error_type(span: SpanRecord) -> str | None:
    raw = span.attributes.get("error.type")
    code = span.attributes.get("http.response.status_code")
    if raw is not None:
        return str(raw)
    if span.is_error or (isinstance(code, int) and code >= 500):
        return str(code) if code is not None else "error"
    return None


def _server_spans(traces: Iterable[Trace]) -> list[_ServerSpan]:
    out: list[_ServerSpan] = []
    for trace in traces:
        for span in trace.spans:
            if span.kind is not SpanKind.SERVER:
                continue
            outgoing = _outgoing(trace, span)
            own_ns = (span.end_ns - span.start_ns) - _covered_ns(span, outgoing)
            error_type = _span_error_type(span)
            failed_below = any(_span_error_type(o) is not None for o in outgoing)
            origin = error_type is not None and error_type not in CANCELLED and not failed_below
            out.append(_ServerSpan(span, max(0, own_ns) / 1e6, origin, error_type))
    return out


# -- signals ---------------------------------------------------------------------------------


@dataclass
class _Signal:
    component: str
    service: str
    where: Where
    kind: str
    k: int
    n: int
    p0: float
    text: str
    fixed: float | None = None
    """A surprise computed by the signal itself (not a binomial count)."""

    @property
    def surprise(self) -> float:
        if self.fixed is not None:
            return self.fixed
        if self.k < MIN_EVENTS or self.k / self.n <= self.p0:
            return 0.0
        return binomial_surprise(self.k, self.n, self.p0)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def _pct(value: float) -> str:
    return f"{value:.0%}" if value >= 0.01 or value == 0 else f"{value:.1%}"


def _common(values: Iterable[str], top: int = 2) -> str:
    counted = Counter(values).most_common(top)
    return ", ".join(f"{v} x{c}" for v, c in counted)


def _network_signals(base: Sequence[Call], fault: Sequence[Call]) -> list[_Signal]:
    """Per callee instance: calls slow on the wire, and calls the callee never recorded."""
    base_wire: dict[str, list[float]] = defaultdict(list)
    base_calls: Counter[str] = Counter()
    base_lost: Counter[str] = Counter()
    for c in base:
        if c.client is None:
            continue
        base_calls[c.callee] += 1
        base_lost[c.callee] += not c.answered
        if (w := c.wire_s) is not None:
            base_wire[c.callee].append(w * 1000.0)
    all_wire = [w for ws in base_wire.values() for w in ws]
    thresholds = {
        svc: _threshold_ms(ws if len(ws) >= 5 else all_wire) for svc, ws in base_wire.items()
    }
    pooled = _threshold_ms(all_wire)

    by_target: dict[tuple[str, str], list[Call]] = defaultdict(list)
    for c in fault:
        if c.client is not None:
            by_target[(c.callee_instance or c.callee, c.callee)].append(c)
    signals: list[_Signal] = []
    for (component, service), group in sorted(by_target.items()):
        callers = ", ".join(sorted({c.caller for c in group}))
        n = len(group)
        lost = [c for c in group if not c.answered]
        # A call its callee never recorded is rare on any healthy link: pooled baseline.
        p_lost = _base_rate(base_lost.total(), base_calls.total(), floor=LOST_RATE_FLOOR)
        signals.append(
            _Signal(
                component,
                service,
                "network",
                "no-answer",
                len(lost),
                n,
                p_lost,
                f"{callers} -> {component}: {len(lost)} of {n} calls got no answer "
                f"({_common(c.error_type or 'answered, span lost' for c in lost)}; "
                f"baseline {_pct(base_lost.total() / max(1, base_calls.total()))})",
            )
        )
        limit = thresholds.get(service, pooled)
        wires = [w * 1000.0 for c in group if (w := c.wire_s) is not None]
        if limit is None or not wires:
            continue
        slow = sum(w > limit for w in wires)
        base_ws = base_wire.get(service) or all_wire
        base_slow = sum(w > limit for w in base_ws)
        signals.append(
            _Signal(
                component,
                service,
                "network",
                "slow-wire",
                slow,
                len(wires),
                _base_rate(base_slow, len(base_ws)),
                f"{callers} -> {component}: {slow} of {len(wires)} calls slow on the wire "
                f"(> {_ms(limit)}; median {_ms(percentile(base_ws, 50))} before, "
                f"{_ms(percentile(wires, 50))} during)",
            )
        )
    return signals


def _service_signals(base: Sequence[_ServerSpan], fault: Sequence[_ServerSpan]) -> list[_Signal]:
    """Per instance: SERVER spans slow in their own time, and errors that started there."""
    base_self: dict[tuple[str, str], list[float]] = defaultdict(list)
    base_errors: Counter[str] = Counter()
    base_count: Counter[str] = Counter()
    for s in base:
        base_self[(s.span.service, s.span.name)].append(s.self_ms)
        base_count[s.span.service] += 1
        base_errors[s.span.service] += s.origin_error
    limits = {
        key: limit
        for key, v in base_self.items()
        if len(v) >= 5 and (limit := _threshold_ms(v)) is not None
    }
    base_slow: Counter[str] = Counter()
    base_judged: Counter[str] = Counter()
    for (service, _), values in base_self.items():
        limit = limits.get((service, _))
        if limit is not None:
            base_judged[service] += len(values)
            base_slow[service] += sum(v > limit for v in values)

    by_instance: dict[tuple[str, str], list[_ServerSpan]] = defaultdict(list)
    for s in fault:
        by_instance[(s.span.instance_id or s.span.service, s.span.service)].append(s)
    signals: list[_Signal] = []
    for (component, service), group in sorted(by_instance.items()):
        errors = [s for s in group if s.origin_error]
        signals.append(
            _Signal(
                component,
                service,
                "in-service",
                "errors",
                len(errors),
                len(group),
                _base_rate(base_errors[service], base_count[service]),
                f"{component}: {len(errors)} of {len(group)} requests failed here "
                f"({_common(s.error_type or '?' for s in errors)}; baseline "
                f"{_pct(base_errors[service] / max(1, base_count[service]))})",
            )
        )
        judged = [s for s in group if (s.span.service, s.span.name) in limits]
        if not judged:
            continue
        slow = [s for s in judged if s.self_ms > limits[(s.span.service, s.span.name)]]
        before = [v for (svc, _), vs in base_self.items() if svc == service for v in vs]
        signals.append(
            _Signal(
                component,
                service,
                "in-service",
                "slow-self",
                len(slow),
                len(judged),
                _base_rate(base_slow[service], base_judged[service]),
                f"{component}: {len(slow)} of {len(judged)} requests slow in their own time "
                f"(self time median {_ms(percentile(before, 50))} before, "
                f"{_ms(percentile([s.self_ms for s in judged], 50))} during)",
            )
        )
    return signals


def registry_registrations(spans: Iterable[SpanRecord]) -> list[tuple[int, str, str]]:
    """(start, service, instance) of every successful registration the registry recorded."""
    out = []
    for span in spans:
        route = str(span.attributes.get("http.route", ""))
        code = span.attributes.get("http.response.status_code")
        if (
            span.kind is SpanKind.SERVER
            and route.endswith(REGISTER_ROUTE_SUFFIX)
            and span.attributes.get("http.request.method") == "PUT"
            and isinstance(code, int)
            and code < 400
        ):
            parts = str(span.attributes.get("url.path", "")).strip("/").split("/")
            if len(parts) >= 5 and parts[-2] == "instances":
                out.append((span.start_ns, parts[-3], parts[-1]))
    return out


def _restart_signals(
    registrations: Sequence[tuple[int, str, str]],
    baseline: Window,
    window: Window,
    instances: int,
) -> list[_Signal]:
    """Instances that registered again during the fault: they restarted.

    Scored as a Poisson surprise against the baseline's registration rate per instance (with
    none there, ``RESTART_RATE_FLOOR`` per window: instances do not restart by themselves).
    """
    base = sum(baseline.holds(ns) for ns, _, _ in registrations)
    span_s = max(1.0, baseline.end_s - baseline.start_s)
    expected = max(
        RESTART_RATE_FLOOR,
        base / (span_s * max(1, instances)) * (window.end_s - window.start_s),
    )
    per: Counter[tuple[str, str]] = Counter(
        (inst, svc) for ns, svc, inst in registrations if window.holds(ns)
    )
    return [
        _Signal(
            inst,
            svc,
            "in-service",
            "restart",
            k,
            k,
            0.0,
            f"{inst}: registered again {k} time(s) during the fault (a restart; "
            f"{base} registrations in the baseline)",
            fixed=_poisson_surprise(k, expected),
        )
        for (inst, svc), k in sorted(per.items())
    ]


def _poisson_surprise(k: int, lam: float) -> float:
    """``-log10 P(X >= k)`` for ``X ~ Poisson(lam)``."""
    below = sum(math.exp(-lam + i * math.log(lam) - math.lgamma(i + 1)) for i in range(k))
    tail = max(1.0 - below, 1e-300)
    if tail < 1e-12:  # 1 - below loses precision: use the first term of the tail
        tail = math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1))
    return min(MAX_SURPRISE, -math.log10(tail))


def _rank(signals: Iterable[_Signal]) -> list[Suspect]:
    per: dict[tuple[str, str], list[_Signal]] = defaultdict(list)
    for s in signals:
        if s.surprise > 0:
            per[(s.component, s.service)].append(s)
    suspects = []
    for (component, service), sigs in per.items():
        sigs.sort(key=lambda s: -s.surprise)
        net = sum(s.surprise for s in sigs if s.where == "network")
        inside = sum(s.surprise for s in sigs if s.where == "in-service")
        suspects.append(
            Suspect(
                component=component,
                service=service,
                where="network" if net >= inside else "in-service",
                score=net + inside,
                evidence=tuple(f"{s.text} [{s.surprise:.1f}]" for s in sigs),
            )
        )
    suspects.sort(key=lambda s: (-s.score, s.component))
    return suspects


def _matches(suspect: Suspect, truth: FaultTruth) -> bool:
    if suspect.component in truth.instances:
        return True
    if suspect.component == suspect.service and suspect.service in truth.services:
        return True  # the instance is unknown; the service is right
    if not truth.instances and suspect.service in truth.services:
        return True  # a service-wide fault without instance units
    for link in truth.links:
        caller, _, callee = link.partition("->")
        if suspect.component == caller or (
            suspect.where == "network" and callee in (suspect.service, suspect.component)
        ):
            return True
    return False


# -- entry points ----------------------------------------------------------------------------


def localize(
    spans: Sequence[SpanRecord], faults: Sequence[FaultTruth], baseline: Window
) -> list[Localization]:
    """Rank suspects for each fault's window against ``baseline``, and score each ranking."""
    traces = assemble(spans)
    registrations = registry_registrations(spans)
    instance_count = len({s.instance_id for s in spans})
    all_calls = calls(traces)
    servers = _server_spans(traces)
    base_calls = [c for c in all_calls if baseline.holds(c.start_ns)]
    base_servers = [s for s in servers if baseline.holds(s.span.start_ns)]
    base_count = sum(baseline.holds(s.start_ns) for s in spans)
    results: list[Localization] = []
    for fault in faults:
        window = Window(fault.window.start_s - EXPORT_LEAD_S, fault.window.end_s)
        fault_count = sum(window.holds(s.start_ns) for s in spans)
        signals: dict[tuple[str, str], _Signal] = {}
        onset = Window(window.start_s, min(window.end_s, window.start_s + ONSET_S))
        for sig in _restart_signals(registrations, baseline, window, instance_count):
            signals[(sig.component, sig.kind)] = sig
        for w in (window, onset):
            fault_calls = [c for c in all_calls if w.holds(c.start_ns)]
            fault_servers = [s for s in servers if w.holds(s.span.start_ns)]
            for sig in (
                *_network_signals(base_calls, fault_calls),
                *_service_signals(base_servers, fault_servers),
            ):
                key = (sig.component, sig.kind)
                if key not in signals or sig.surprise > signals[key].surprise:
                    signals[key] = sig
        suspects = tuple(_rank(signals.values()))

        if base_count < MIN_BASELINE_SPANS or fault_count < MIN_FAULT_SPANS:
            results.append(
                Localization(
                    fault,
                    "undetermined",
                    None,
                    0.0,
                    suspects,
                    f"too few spans ({base_count} in the baseline, {fault_count} during the "
                    f"fault; at least {MIN_BASELINE_SPANS} and {MIN_FAULT_SPANS} needed)",
                    base_count,
                    fault_count,
                )
            )
            continue
        if not suspects or suspects[0].score < SIGNIFICANT:
            top = f" (best: {suspects[0].component} {suspects[0].score:.1f})" if suspects else ""
            results.append(
                Localization(
                    fault,
                    "undetermined",
                    None,
                    0.0,
                    suspects,
                    f"no instance deviated significantly from the baseline{top}",
                    base_count,
                    fault_count,
                )
            )
            continue
        rank = next((i for i, s in enumerate(suspects, 1) if _matches(s, fault)), None)
        status: Status = "located" if rank == 1 else "not_located"
        reason = (
            f"{fault.describe()} ranked #{rank} of {len(suspects)}"
            if rank is not None
            else f"{fault.describe()} is not among the {len(suspects)} suspects"
        )
        results.append(
            Localization(
                fault,
                status,
                rank,
                1.0 / rank if rank else 0.0,
                suspects,
                reason,
                base_count,
                fault_count,
            )
        )
    return results


def truths_from_journal(data: Mapping[str, Any]) -> tuple[list[FaultTruth], Window | None]:
    """The applied faults of a journal and the baseline before the first of them."""
    truths: list[FaultTruth] = []
    for entry in data.get("faults", []):
        applied = entry.get("applied_at")
        if applied is None:
            continue
        end = entry.get("rolled_back_at") or data.get("ended_at") or time.time()
        instances: list[str] = []
        services: list[str] = []
        links: list[str] = []
        for unit in entry.get("units", []):
            inst = unit.get("instance")
            if inst:
                instances.append(str(inst["instance_id"]))
                services.append(str(inst["service"]))
            else:
                links.append(str(unit["id"]))
        target = str(entry.get("target", ""))
        if target.startswith("service "):
            services.append(target.removeprefix("service "))
        truths.append(
            FaultTruth(
                fault_id=str(entry["id"]),
                type=str(entry.get("type", "")),
                target=target,
                instances=tuple(dict.fromkeys(instances)),
                services=tuple(dict.fromkeys(services)),
                links=tuple(links),
                window=Window(float(applied), float(end)),
            )
        )
    if not truths:
        return [], None
    first = min(t.window.start_s for t in truths)
    phases = {e["phase"]: e for e in data.get("timeline", [])}
    start = next(
        (
            float(phases[p]["start"])
            for p in ("warmup", "steady-state-before", "method")
            if p in phases
        ),
        first - 30.0,
    )
    return truths, Window(min(start, first), first - EXPORT_LEAD_S)


def localize_journal(data: Mapping[str, Any], spans: Sequence[SpanRecord]) -> dict[str, Any] | None:
    """The journal's ``localization`` section for ``spans``; None when no fault was applied."""
    truths, baseline = truths_from_journal(data)
    if baseline is None:
        return None
    lo = baseline.start_s - 5.0
    hi = max(t.window.end_s for t in truths) + 5.0
    relevant = [s for s in spans if lo * 1e9 <= s.start_ns <= hi * 1e9]
    results = localize(relevant, truths, baseline)
    located = sum(r.status == "located" for r in results)
    decided = [r for r in results if r.status != "undetermined"]
    return {
        "baseline": {"start": baseline.start_s, "end": baseline.end_s},
        "faults": [r.to_json() for r in results],
        "located": located,
        "decided": len(decided),
        "of": len(results),
        "score": round(sum(r.score for r in decided) / len(decided), 3) if decided else None,
        "headline": headline(results),
    }


def summary_lines(section: Mapping[str, Any] | None) -> list[str]:
    """A journal's ``localization`` section in a few lines (per fault: verdict, top suspect)."""
    if not section:
        return []
    if "error" in section:
        return [f"fault localisation failed: {section['error']}"]
    lines = []
    for f in section.get("faults", []):
        truth = ", ".join(f["truth"]["instances"] + f["truth"]["links"]) or f["truth"]["target"]
        lines.append(f"fault {f['fault_id']} on {truth}: located {f['located']} - {f['reason']}")
        for i, s in enumerate(f.get("suspects", [])[:3], 1):
            lines.append(f"  #{i} {s['component']} ({s['where']}, score {s['score']:g})")
            lines.extend(f"       {e}" for e in s["evidence"][:2])
    return lines


def headline(results: Sequence[Localization]) -> str:
    """One cell for a summary table: ``yes (#1)``, ``2/3 yes``, ``undetermined`` ..."""
    if not results:
        return "n/a"
    if len(results) == 1:
        return results[0].label
    located = sum(r.status == "located" for r in results)
    undetermined = sum(r.status == "undetermined" for r in results)
    text = f"{located}/{len(results)} yes"
    return text + (f", {undetermined} undetermined" if undetermined else "")


def localize_run(run_dir: Path, journal: Mapping[str, Any]) -> dict[str, Any] | None:
    """Read the run folder's span files and localize the journal's faults (blocking I/O)."""
    traces_dir = run_dir / "traces"
    if not traces_dir.is_dir() or not span_files(traces_dir):
        return None
    return localize_journal(journal, load_spans(run_dir))


async def wait_for_span_files(
    traces_dir: Path, *, not_before: float, quiet_s: float = 1.0, within_s: float = 5.0
) -> None:
    """Give the processes time to flush the spans of the fault windows (bounded).

    Waits until ``not_before`` (wall clock: the last fault's end plus the export delay), then
    until no span file grew for ``quiet_s`` — at most ``within_s`` in all, since a running
    stack keeps writing (heartbeats, probes) and the files need never stop growing.
    """
    give_up = time.monotonic() + within_s
    wait = not_before - time.time()
    if wait > 0:
        await asyncio.sleep(min(wait, within_s))

    def sizes() -> dict[str, int]:
        sizes: dict[str, int] = {}
        for path in span_files(traces_dir):  # a file rotated meanwhile is just gone
            with contextlib.suppress(FileNotFoundError):
                sizes[path.name] = path.stat().st_size
        return sizes

    last = await asyncio.to_thread(sizes)
    quiet_since = time.monotonic()
    while time.monotonic() < give_up:
        await asyncio.sleep(0.25)
        now = await asyncio.to_thread(sizes)
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
