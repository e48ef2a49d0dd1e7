"""Trace analysis: traces, the service map, hop counts and self time, from ``SpanRecord`` lists.

Pure functions over the records ``observability.spans`` reads, so they work the same on a live
run folder, on a finished one and on spans crafted in a test.

- ``assemble``: spans grouped into ``Trace``s with their parent/child links.
- ``calls``: every service-to-service hop as a ``Call``. An RPC hop is a CLIENT span linked to
  the SERVER span that is its child (the callee's side); when the callee never answered (a
  killed instance, a cut link) the call still counts, with the callee named from the client
  span's attributes (``testbed.rpc.upstream``/``testbed.rpc.instance``, or the address other
  calls resolved). Hops that propagate trace context without a CLIENT span of their own (the
  CDN and the balancer forward requests) appear as a SERVER span whose parent lives in another
  process; they count as calls with the callee's duration and no wire time.
- ``service_map``: edges ``caller -> callee`` with call and error counts and p50/p99 latency.
- ``hop_count`` / ``hop_distribution``: service-to-service hops on a trace's longest path,
  and how they spread per entry route.
- ``self_time``: a span's duration minus the time covered by its children, so latency can be
  attributed. The self time of a CLIENT span is its time "on the wire" (network, proxies and
  queues between caller and callee), which is what network faults add to.

Percentiles use the nearest-rank method (exact values that occurred, no interpolation).
Written by hand because the structures are small and specific; no tracing library offers
these aggregations over OTLP files.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from observability.spans import SpanKind, SpanRecord

__all__ = [
    "Call",
    "EdgeStats",
    "SelfTimeStats",
    "ServiceMap",
    "Trace",
    "assemble",
    "calls",
    "entry_route",
    "hop_count",
    "hop_distribution",
    "percentile",
    "self_time_ns",
    "self_times",
    "service_map",
]

CATCH_ALL_MARKERS = ("{tail", ".*}")
"""Route templates of forwarding components (CDN, balancer): not a request's route."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# -- traces ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """One trace: its spans (by start time), parent/child links and roots."""

    trace_id: str
    spans: tuple[SpanRecord, ...]
    by_id: Mapping[str, SpanRecord]
    children: Mapping[str, tuple[SpanRecord, ...]]
    roots: tuple[SpanRecord, ...]
    """Spans whose parent is not in the trace (the true root, and orphans of lost spans)."""

    def parent(self, span: SpanRecord) -> SpanRecord | None:
        return None if span.parent_span_id is None else self.by_id.get(span.parent_span_id)

    def children_of(self, span: SpanRecord) -> tuple[SpanRecord, ...]:
        return self.children.get(span.span_id, ())

    @property
    def start_ns(self) -> int:
        return min(s.start_ns for s in self.spans)

    @property
    def root(self) -> SpanRecord:
        """The earliest root (the earliest span if parent links form a cycle)."""
        return self.roots[0] if self.roots else self.spans[0]


def assemble(spans: Iterable[SpanRecord]) -> list[Trace]:
    """Group spans into traces (ordered by their first span's start)."""
    grouped: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        grouped[span.trace_id].append(span)
    traces: list[Trace] = []
    for trace_id, members in grouped.items():
        members.sort(key=lambda s: (s.start_ns, s.end_ns))
        by_id = {s.span_id: s for s in members}
        children: dict[str, list[SpanRecord]] = defaultdict(list)
        roots: list[SpanRecord] = []
        for s in members:
            if s.parent_span_id is not None and s.parent_span_id in by_id:
                children[s.parent_span_id].append(s)
            else:
                roots.append(s)
        traces.append(
            Trace(
                trace_id=trace_id,
                spans=tuple(members),
                by_id=by_id,
                children={k: tuple(v) for k, v in children.items()},
                roots=tuple(roots),
            )
        )
    traces.sort(key=lambda t: (t.spans[0].start_ns, t.trace_id))
    return traces


# -- calls -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One service-to-service hop, as the caller made it and (if it got there) the callee saw it."""

    trace_id: str
    caller: str
    caller_instance: str
    callee: str
    callee_instance: str | None
    start_ns: int
    duration_s: float
    """As the caller saw it (the CLIENT span); the SERVER span's when there is no CLIENT span."""
    error: bool
    """The caller saw an error (or, without a CLIENT span, the callee answered one)."""
    error_type: str | None
    client: SpanRecord | None
    server: SpanRecord | None

    @property
    def wire_s(self) -> float | None:
        """Time between caller and callee (CLIENT minus SERVER duration); None if unknown."""
        if self.client is None or self.server is None:
            return None
        return max(0.0, self.client.duration_s - self.server.duration_s)

    @property
    def answered(self) -> bool:
        """Whether the callee's side of the call was recorded."""
        return self.server is not None

    @property
    def edge(self) -> tuple[str, str]:
        return self.caller, self.callee


def _is_remote_child(parent: SpanRecord, child: SpanRecord) -> bool:
    return child.instance_id != parent.instance_id or child.service != parent.service


def _address(span: SpanRecord) -> str | None:
    host, port = span.attributes.get("server.address"), span.attributes.get("server.port")
    return None if host is None or port is None else f"{host}:{port}"


def _status_code(span: SpanRecord) -> int | None:
    raw = span.attributes.get("http.response.status_code")
    return raw if isinstance(raw, int) else None


def _is_error(span: SpanRecord) -> bool:
    code = _status_code(span)
    return span.is_error or (code is not None and code >= 500)


def _error_type(span: SpanRecord | None) -> str | None:
    if span is None:
        return None
    raw = span.attributes.get("error.type")
    if raw is not None:
        return str(raw)
    return "error" if _is_error(span) else None


def calls(traces: Iterable[Trace]) -> list[Call]:
    """Every hop of every trace (ordered by start)."""
    traces = list(traces)
    # Where an address leads: learnt from calls that reached their callee, so that a call
    # that did not (a killed instance) can still name the instance it was aimed at.
    address_to_instance: dict[str, str] = {}
    for trace in traces:
        for span in trace.spans:
            if span.kind is not SpanKind.CLIENT:
                continue
            address = _address(span)
            for child in trace.children_of(span):
                if child.kind is SpanKind.SERVER and address is not None:
                    address_to_instance[address] = child.instance_id
    found: list[Call] = []
    for trace in traces:
        for span in trace.spans:
            if span.kind is SpanKind.CLIENT:
                found.append(_client_call(trace, span, address_to_instance))
            elif span.kind is SpanKind.SERVER:
                parent = trace.parent(span)
                if (
                    parent is not None
                    and parent.kind is not SpanKind.CLIENT
                    and _is_remote_child(parent, span)
                ):
                    found.append(
                        Call(
                            trace_id=trace.trace_id,
                            caller=parent.service,
                            caller_instance=parent.instance_id,
                            callee=span.service,
                            callee_instance=span.instance_id,
                            start_ns=span.start_ns,
                            duration_s=span.duration_s,
                            error=_is_error(span),
                            error_type=_error_type(span),
                            client=None,
                            server=span,
                        )
                    )
    found.sort(key=lambda c: c.start_ns)
    return found


def _client_call(trace: Trace, span: SpanRecord, address_to_instance: Mapping[str, str]) -> Call:
    servers = [c for c in trace.children_of(span) if c.kind is SpanKind.SERVER]
    server = servers[0] if servers else None
    attrs = span.attributes
    callee_instance: str | None
    if server is not None:
        callee, callee_instance = server.service, server.instance_id
    else:
        address = _address(span)
        upstream = attrs.get("testbed.rpc.upstream") or attrs.get("peer.service")
        callee = str(upstream or address or "unknown")
        hint = attrs.get("testbed.rpc.instance")
        named = str(hint) if hint is not None and "@" not in str(hint) else None
        callee_instance = named or (
            address_to_instance.get(address) if address is not None else None
        )
    error = _is_error(span)
    return Call(
        trace_id=trace.trace_id,
        caller=span.service,
        caller_instance=span.instance_id,
        callee=callee,
        callee_instance=callee_instance,
        start_ns=span.start_ns,
        duration_s=span.duration_s,
        error=error,
        error_type=_error_type(span) if error else None,
        client=span,
        server=server,
    )


# -- the service map -------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeStats:
    caller: str
    callee: str
    calls: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    wire_p50_ms: float | None
    """Median time on the wire (CLIENT minus SERVER span); None for hops without CLIENT spans."""

    @property
    def error_ratio(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class ServiceMap:
    edges: tuple[EdgeStats, ...]
    services: Mapping[str, int]
    """Every service seen, with its number of SERVER spans."""
    depth: Mapping[str, int]
    """Each service's smallest hop distance from an entry service (services nothing calls)."""

    def to_json(self) -> dict[str, object]:
        return {
            "services": [
                {"name": s, "server_spans": n, "depth": self.depth.get(s, 0)}
                for s, n in sorted(self.services.items())
            ],
            "edges": [
                {
                    "caller": e.caller,
                    "callee": e.callee,
                    "calls": e.calls,
                    "errors": e.errors,
                    "p50_ms": _round(e.p50_ms),
                    "p99_ms": _round(e.p99_ms),
                    "wire_p50_ms": _round(e.wire_p50_ms),
                }
                for e in self.edges
            ],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def edge_stats(hops: Iterable[Call]) -> list[EdgeStats]:
    """Per ``caller -> callee``: calls, errors, p50/p99 of what the caller saw, wire median."""
    grouped: dict[tuple[str, str], list[Call]] = defaultdict(list)
    for call in hops:
        grouped[call.edge].append(call)
    out: list[EdgeStats] = []
    for (caller, callee), group in sorted(grouped.items()):
        durations = [c.duration_s * 1000.0 for c in group]
        wires = [w * 1000.0 for c in group if (w := c.wire_s) is not None]
        out.append(
            EdgeStats(
                caller=caller,
                callee=callee,
                calls=len(group),
                errors=sum(c.error for c in group),
                p50_ms=percentile(durations, 50),
                p99_ms=percentile(durations, 99),
                wire_p50_ms=percentile(wires, 50),
            )
        )
    return out


def _depths(services: Iterable[str], edges: Sequence[EdgeStats]) -> dict[str, int]:
    """Each service's column: the longest call path from an entry point to it, so every edge
    points to a later column (a service called by two layers sits after the deeper one)."""
    names = sorted(set(services) | {e.caller for e in edges} | {e.callee for e in edges})
    callees = {e.callee for e in edges if e.callee != e.caller}
    depth = {s: 0 for s in names if s not in callees}
    if not depth and names:  # everything is called by something (a cycle): start anywhere
        depth = {names[0]: 0}
    # Longest path by relaxation; at most len(names) rounds, so a cycle cannot loop forever.
    for _ in range(len(names)):
        changed = False
        for e in edges:
            if e.caller == e.callee or e.caller not in depth:
                continue
            if depth.get(e.callee, -1) < depth[e.caller] + 1 <= len(names):
                depth[e.callee] = depth[e.caller] + 1
                changed = True
        if not changed:
            break
    for e in edges:  # anything unreachable (only in a cycle) goes after its caller
        depth.setdefault(e.callee, depth.get(e.caller, 0) + 1)
    return depth


def service_map(traces: Sequence[Trace]) -> ServiceMap:
    """The service map of ``traces``: every edge with its statistics, every service's depth."""
    edges = edge_stats(calls(traces))
    services: Counter[str] = Counter()
    for trace in traces:
        for span in trace.spans:
            services[span.service] += span.kind is SpanKind.SERVER
    for e in edges:  # a callee that never answered still is on the map
        services.setdefault(e.callee, 0)
    return ServiceMap(edges=tuple(edges), services=dict(services), depth=_depths(services, edges))


# -- hops ------------------------------------------------------------------------------------


def hop_count(trace: Trace) -> int:
    """Service-to-service hops on the trace's longest path.

    A hop is a step from a span to a child in another process, or a CLIENT span that got no
    SERVER child (a call that was made but never recorded by its callee).
    """
    best = 0
    stack: list[tuple[SpanRecord, int]] = [(r, 0) for r in trace.roots]
    while stack:
        span, hops = stack.pop()
        kids = trace.children_of(span)
        if span.kind is SpanKind.CLIENT and not any(k.kind is SpanKind.SERVER for k in kids):
            best = max(best, hops + 1)
        best = max(best, hops)
        for kid in kids:
            stack.append((kid, hops + (1 if _is_remote_child(span, kid) else 0)))
    return best


def entry_route(trace: Trace) -> str:
    """What the user asked for: the first SERVER span (from the root down) with a real route.

    Forwarding components (CDN, balancer) match everything with a catch-all route, so the
    route is taken from the first component that routes (the gateway) when there is one;
    a request that never got past them (a CDN cache hit) is named after the root and its service.
    """
    queue = [trace.root]
    while queue:
        span = queue.pop(0)
        route = span.attributes.get("http.route")
        if span.kind is SpanKind.SERVER and (
            route is None or not any(m in str(route) for m in CATCH_ALL_MARKERS)
        ):
            return span.name
        queue.extend(sorted(trace.children_of(span), key=lambda s: s.start_ns))
    return f"{trace.root.name} (at {trace.root.service})"


def hop_distribution(traces: Iterable[Trace]) -> dict[str, Counter[int]]:
    """Per entry route: how many traces had each hop count."""
    out: dict[str, Counter[int]] = defaultdict(Counter)
    for trace in traces:
        out[entry_route(trace)][hop_count(trace)] += 1
    return dict(out)


# -- self time -------------------------------------------------------------------------------


def self_time_ns(span: SpanRecord, children: Iterable[SpanRecord]) -> int:
    """``span``'s duration minus the union of its children's intervals (clipped to the span)."""
    intervals = sorted(
        (max(c.start_ns, span.start_ns), min(c.end_ns, span.end_ns))
        for c in children
        if c.end_ns > span.start_ns and c.start_ns < span.end_ns
    )
    covered = 0
    cur_start: int | None = None
    cur_end = 0
    for start, end in intervals:
        if cur_start is None or start > cur_end:
            if cur_start is not None:
                covered += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_start is not None:
        covered += cur_end - cur_start
    return max(0, span.end_ns - span.start_ns - covered)


@dataclass(frozen=True)
class SelfTimeStats:
    """Self time of one component: a service (its own spans) or a wire ``caller->callee``."""

    component: str
    spans: int
    total_s: float
    p50_ms: float | None
    p99_ms: float | None


def component_of(trace: Trace, span: SpanRecord, *, by_instance: bool = False) -> str:
    """Whom ``span``'s self time belongs to: its service, or the wire for a CLIENT span."""
    own = span.instance_id if by_instance and span.instance_id else span.service
    if span.kind is not SpanKind.CLIENT:
        return own
    servers = [c for c in trace.children_of(span) if c.kind is SpanKind.SERVER]
    if servers:
        callee = servers[0].instance_id if by_instance else servers[0].service
    else:
        callee = str(span.attributes.get("testbed.rpc.upstream") or _address(span) or "?")
    return f"{own}->{callee} (wire)"


def self_times(traces: Iterable[Trace], *, by_instance: bool = False) -> list[SelfTimeStats]:
    """Self time per component, largest total first (where the time of requests went)."""
    per: dict[str, list[float]] = defaultdict(list)
    for trace in traces:
        for span in trace.spans:
            ns = self_time_ns(span, trace.children_of(span))
            per[component_of(trace, span, by_instance=by_instance)].append(ns / 1e6)
    out = [
        SelfTimeStats(
            component=c,
            spans=len(v),
            total_s=sum(v) / 1000.0,
            p50_ms=percentile(v, 50),
            p99_ms=percentile(v, 99),
        )
        for c, v in per.items()
    ]
    out.sort(key=lambda s: (-s.total_s, s.component))
    return out
