"""Locate a fault blind: from the telemetry of a run alone, with no injection time, no target.

1. **RED series from spans.** Every SERVER span is an event of its *instance* (its self time,
   whether an error started there); every hop (``observability.analysis.calls``) is an event of
   its *link*, caller instance -> callee instance (time on the wire, whether the callee never
   answered, whether the caller saw an error). Hops without a CLIENT span (the CDN and the
   balancer forward requests) get the forwarding span's self time as their wire time. Events
   are binned per second.
2. **The anomaly window.** Each entity's per-second series is compared with that entity's own
   level over the whole run (its median: a fault holds less than half of what is given) —
   slow events, errors, unanswered calls (binomial surprise), calls that stopped arriving
   (Poisson lower tail). Seconds where some entity is significantly off are alarms; the
   largest cluster of alarms (gaps up to ``MERGE_GAP_S`` merged) is the window; what lies
   outside it, less a margin, is the baseline.
3. **Signals, normalised per entity.** For each instance and link, window against its own
   baseline: the excess *fraction* of errors or unanswered calls, the added milliseconds per
   request (self time, or time on the wire), the unexplained drop in calls (calls that stopped
   arriving while their callers did not lose theirs). Each becomes a severity in [0, 1)
   (``1 - exp(-x / scale)``), kept only where the count behind it is significant against the
   entity's baseline. Nothing grows with volume: a busy service with a mild slowdown scores its
   mildness, a quiet one with a severe fault its severity.
4. **Process metrics (optional).** Where Prometheus' per-instance CPU, resident memory and
   ``up`` are given (``chaos.procmetrics``), CPU beyond an instance's own level (at its peak),
   memory growth and failed scrapes add evidence to its place and signals to its suspect: a
   CPU burn or a leak leaves little else, a stopped or crashed process fails its scrapes.
5. **Suspects.** An instance's score is its strongest severity (plus a tenth of the others, to
   break ties). Links into an instance where every caller with enough calls is anomalous merge
   into the instance's ingress (its own network); the calls of all callers into an instance
   are also judged together (a sparse callee's callers may each see too few failures). Other
   anomalous links are suspects of their own. A forwarding instance's errors and self time are
   its link's to its upstream. A span signal that several suspects carry (a host stall slows
   everything) is divided by the square root of their number; a process's own metrics are not.
   The strongest cluster of alarms is the window; the next two add their suspects below.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.localize import _server_spans, _ServerSpan, binomial_surprise, registry_registrations
from chaos.rcascore import Entity
from observability.analysis import Call, assemble, calls, percentile
from observability.spans import SpanRecord, load_spans

__all__ = [
    "BlindResult",
    "BlindSuspect",
    "BlindWindow",
    "blind_localization_run",
    "blind_section",
    "localize_blind",
]

BIN_S = 1.0
EXPORT_S = 1.0
"""Spans reach the files one export interval after they end: added to the detection time."""
ALARM = 8.0
"""A second is an alarm when some entity's count around it has ``p < 1e-5`` under its own level
(strict: every entity is scanned at every second and scale)."""
WEAK_ALARM = 5.0
"""Seconds after a window's alarms (or the one before) join it from this (``p < 0.001``)."""
SCALES_S = (1, 3, 6)
MAX_EVIDENCE = 20.0
SPREAD_FREE = 3
"""Up to this many places may be off in the same second before it counts as host-wide."""
ALARM_RATE_FLOOR = 0.01
SIGNIFICANT = 3.0
"""A signal counts when its window count has ``p < 0.001`` under the entity's baseline."""
MERGE_GAP_S = 3
MARGIN_S = 2
MIN_BASELINE_S = 4
MIN_EVENTS = 3
BASELINE_EVENTS = 5
"""Events before a second that make its own baseline (fewer: the whole run's rate)."""
JUDGE_MIN_S = 4.0
"""Suspects are judged over at least this long from the window's start (a sparse fault's
seconds are not all alarms: at one call a second, a 2 s window holds too few to judge)."""
SCAN_MIN_EVENTS = 2
"""Two bad calls in a few seconds may start a window (a place sums its links' evidence)."""
MIN_CALLS_TO_VETO = 5
"""A caller with fewer calls into an instance in the window cannot veto the merge into it."""
SLOW_SCALE_MS = 100.0
RATE_SCALE = 0.1
DROP_SCALE = 0.3
RESTART_SEVERITY = 0.5
CLUSTERS = 3
"""Alarm clusters ranked: the strongest is the window, the next two add suspects below."""
RESOURCE_Z = 5.0
"""A resource signal counts when the change is this many robust deviations of its baseline."""
SLOW_FACTOR = 1.5
SLOW_MARGIN_MS = 10.0
RATE_FLOOR = 0.002
ROBUST_FACTOR = 3.0
ROBUST_MARGIN_MS = 20.0
TOP = 5


@dataclass(frozen=True)
class BlindWindow:
    start_s: float
    end_s: float
    first_alarm_s: float
    """When the first alarm second of the window could be known (its end plus an export)."""
    alarms: int


@dataclass(frozen=True)
class BlindSuspect:
    name: str
    entity: Entity
    where: str
    score: float
    evidence: tuple[str, ...]

    @property
    def match_key(self) -> Entity:
        return self.entity

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.entity.kind,
            "where": self.where,
            "score": round(self.score, 3),
            "evidence": list(self.evidence),
        }


@dataclass(frozen=True)
class BlindResult:
    window: BlindWindow | None
    suspects: tuple[BlindSuspect, ...]
    reason: str
    spans: int

    def to_json(self) -> dict[str, Any]:
        w = self.window
        return {
            "window": None
            if w is None
            else {
                "start": round(w.start_s, 3),
                "end": round(w.end_s, 3),
                "first_alarm": round(w.first_alarm_s, 3),
                "alarm_seconds": w.alarms,
            },
            "reason": self.reason,
            "spans": self.spans,
            "suspects": [s.to_json() for s in self.suspects[:TOP]],
        }


# -- events ------------------------------------------------------------------------------------


@dataclass
class _Event:
    t: float
    bad_error: bool = False
    lost: bool = False
    ms: float | None = None
    key: str = ""
    """What ``ms`` is compared within (a route: self times differ per route)."""
    span_id: str = ""
    seen_error: bool = False
    """The caller saw an error, whoever caused it (evidence about the place, for the window)."""


@dataclass
class _Series:
    entity: Entity
    events: list[_Event] = field(default_factory=list)
    callers: set[str] = field(default_factory=set)
    forwarder: bool = False
    arrivals: list[_Event] = field(default_factory=list)
    """Every request it received, forwarded ones too: what its callees' drops are explained by."""


def _link_name(caller: str, callee: str) -> str:
    return f"{caller}->{callee}"


def _build(
    spans: Sequence[SpanRecord],
) -> tuple[dict[str, _Series], dict[str, _Series], list[tuple[float, str, str]]]:
    traces = assemble(spans)
    servers = _server_spans(traces)
    by_id: dict[str, _ServerSpan] = {s.span.span_id: s for s in servers}
    hops: list[Call] = calls(traces)
    instances: dict[str, _Series] = {}
    for s in servers:
        inst = s.span.instance_id or s.span.service
        series = instances.get(inst)
        if series is None:
            series = instances[inst] = _Series(Entity("instance", inst, s.span.service))
        series.events.append(
            _Event(
                s.span.start_ns / 1e9,
                bad_error=s.origin_error,
                ms=s.self_ms,
                key=s.span.name,
                span_id=s.span.span_id,
            )
        )
    links: dict[str, _Series] = {}
    forwarders: set[str] = set()
    forwarded: set[str] = set()
    upstream_of: dict[str, Counter[str]] = defaultdict(Counter)
    for c in hops:
        callee = c.callee_instance or c.callee
        name = _link_name(c.caller_instance, callee)
        series = links.get(name)
        if series is None:
            series = links[name] = _Series(
                Entity("link", callee, c.callee, c.caller_instance, c.caller)
            )
        if c.client is not None:
            wire = c.wire_s
            series.events.append(
                _Event(
                    c.start_ns / 1e9,
                    bad_error=_wire_error(c),
                    seen_error=c.error,
                    lost=not c.answered,
                    ms=None if wire is None else wire * 1000.0,
                )
            )
        else:
            assert c.server is not None
            forwarders.add(c.caller_instance)
            upstream_of[c.caller_instance][callee] += 1
            parent = by_id.get(c.server.parent_span_id or "")
            forwarded.add(c.server.parent_span_id or "")
            series.events.append(
                _Event(c.start_ns / 1e9, ms=None if parent is None else parent.self_ms)
            )
            series.forwarder = True
        if callee in instances:
            instances[callee].callers.add(c.caller_instance)
    # A forwarder's failed forwards leave no hop: its errors are its link's.
    for fwd in forwarders:
        if fwd in instances and upstream_of[fwd]:
            target = upstream_of[fwd].most_common(1)[0][0]
            link = links[_link_name(fwd, target)]
            link.events.extend(
                _Event(e.t, bad_error=e.bad_error) for e in instances[fwd].events if e.bad_error
            )
            link.events.sort(key=lambda e: e.t)
            # Its forwarded requests' time is the link's too: the PoP's own are the rest.
            instances[fwd].arrivals = list(instances[fwd].events)
            instances[fwd].events = [
                e for e in instances[fwd].events if not e.bad_error and e.span_id not in forwarded
            ]
            instances[fwd].forwarder = True
    for series in instances.values():
        if not series.arrivals:
            series.arrivals = list(series.events)
    return instances, links, _registrations(spans)


def _wire_error(c: Call) -> bool:
    """The caller saw an error that the callee did not cause: it answered fine, in time.

    A callee that failed, or was still working when the caller gave up (a slow handler
    behind a per-try timeout), is its own fault, not the link's.
    """
    server, client = c.server, c.client
    if not c.error or server is None or client is None:
        return False
    server_failed = server.is_error or _server_code(server) >= 500
    return not server_failed and server.duration_s < client.duration_s


def _server_code(span: SpanRecord) -> int:
    code = span.attributes.get("http.response.status_code")
    return code if isinstance(code, int) else 0


def _registrations(spans: Iterable[SpanRecord]) -> list[tuple[float, str, str]]:
    """The registry's successful registrations (``chaos.localize``'s), their start in seconds."""
    return [(start / 1e9, service, inst) for start, service, inst in registry_registrations(spans)]


# -- statistics --------------------------------------------------------------------------------


def _poisson_low(k: int, lam: float) -> float:
    """``-log10 P(X <= k)`` for ``X ~ Poisson(lam)``: how surprising so few events are."""
    if lam <= 0 or k >= lam:
        return 0.0
    terms = [-lam + i * math.log(lam) - math.lgamma(i + 1) for i in range(k + 1)]
    top = max(terms)
    log_cdf = top + math.log(sum(math.exp(t - top) for t in terms))
    return max(0.0, -log_cdf / math.log(10))


def _severity(x: float, scale: float) -> float:
    return 0.0 if x <= 0 else 1.0 - math.exp(-x / scale)


def _limits(events: Iterable[_Event]) -> dict[str, float]:
    per: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.ms is not None:
            per[e.key].append(e.ms)
    out = {}
    for key, values in per.items():
        p95 = percentile(values, 95)
        if p95 is not None and len(values) >= 5:
            out[key] = p95 * SLOW_FACTOR + SLOW_MARGIN_MS
    return out


def _robust_limits(events: Iterable[_Event]) -> dict[str, float]:
    """Slow thresholds from the median, which a fault holding under half the run cannot move."""
    return {k: m * ROBUST_FACTOR + ROBUST_MARGIN_MS for k, m in _medians(events).items()}


def _medians(events: Iterable[_Event]) -> dict[str, float]:
    per: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.ms is not None:
            per[e.key].append(e.ms)
    return {k: statistics.median(v) for k, v in per.items() if len(v) >= 3}


# -- the window --------------------------------------------------------------------------------


@dataclass
class _Binned:
    counts: list[int]
    marks: dict[str, list[int]]
    """Per kind of bad event (error, lost, slow): how many per second."""
    rates: dict[str, list[float]]
    """Per kind, per second: the rate a scan starting in that second is judged against."""
    timed: list[int]
    """Events per second whose time was judged (slow or not)."""


def _binned(series: _Series, t0: float, bins: int) -> _Binned:
    per_bin: list[list[_Event]] = [[] for _ in range(bins)]
    for e in series.events:
        i = int((e.t - t0) // BIN_S)
        if 0 <= i < bins:
            per_bin[i].append(e)
    limits = _robust_limits(series.events)

    def slow(e: _Event) -> bool:
        return e.ms is not None and e.ms > limits.get(e.key, math.inf)

    kinds: dict[str, Any] = {
        "error": lambda e: e.bad_error or e.seen_error,
        "lost": lambda e: e.lost,
        "slow": slow,
    }
    counts = [len(b) for b in per_bin]
    marks = {k: [sum(bool(bad(e)) for e in b) for b in per_bin] for k, bad in kinds.items()}
    return _Binned(
        counts=counts,
        marks=marks,
        rates={
            k: _baselines(counts, marks[k], statistics.median(_rates(per_bin, bad)))
            for k, bad in kinds.items()
        },
        timed=[sum(e.ms is not None and e.key in limits for e in b) for b in per_bin],
    )


def _baselines(counts: Sequence[int], marks: Sequence[int], whole: float) -> list[float]:
    """Per second, the rate of bad events a scan starting there is judged against: the
    entity's rate over the whole run (a fault holds less than half of it), or its own rate
    before that second when lower (a change is against what came before: a sparse series
    that its callers stop using after a fault keeps the fault's rate to the end)."""
    out: list[float] = []
    n = k = 0
    for count, bad in zip(counts, marks, strict=True):
        out.append(max(ALARM_RATE_FLOOR, min(whole, k / n) if n >= BASELINE_EVENTS else whole))
        n += count
        k += bad
    return out


def _bin_alarms(b: _Binned, host_slow: Sequence[int], host_timed: Sequence[int]) -> list[float]:
    """Per second: how surprising the entity's events around it are against its own level.

    Scanned at several scales (``SCALES_S`` seconds), since a quiet entity (one call a
    second) needs a few seconds before a handful of bad calls means anything. Slowness is
    judged against the rest of the host in the same seconds too (``host_*``: every entity's
    slow and timed events): when the two shared cores stall, everything is slow at once.
    """
    bins = len(b.counts)
    level = statistics.median(b.counts) if b.counts else 0.0
    out = [0.0] * bins
    for scale in SCALES_S:
        for i in range(0, max(1, bins - scale + 1)):
            span = range(i, min(bins, i + scale))
            n = sum(b.counts[j] for j in span)
            # The surprise goes to the seconds from the first bad event to the last (or the
            # missing ones), so the window starts where the change does, not a scale earlier.
            if n:
                for kind, marks in b.marks.items():
                    k = sum(marks[j] for j in span)
                    p = b.rates[kind][i]
                    if kind == "slow":
                        others_slow = sum(host_slow[j] - marks[j] for j in span)
                        others = sum(host_timed[j] - b.timed[j] for j in span)
                        if others >= MIN_EVENTS:
                            p = max(p, others_slow / others)
                    if k >= SCAN_MIN_EVENTS and k / n > p:
                        s = binomial_surprise(k, n, p)
                        marked = [j for j in span if marks[j]]
                        for j in range(marked[0], marked[-1] + 1):
                            out[j] = max(out[j], s)
            if level * scale >= MIN_EVENTS:
                s = _poisson_low(n, level * scale)
                for j in span:
                    if b.counts[j] < level:
                        out[j] = max(out[j], s)
    return out


def _rates(per_bin: Sequence[Sequence[_Event]], bad: Any) -> list[float]:
    """The share of bad events per second, a second with none taking the last one seen.

    Per second of time, not per second with events: a sparse series (one call every few
    seconds) may have more of its busy seconds inside a fault than outside, when its callers
    retry into it; over time, a fault still holds less than half of the run.
    """
    rates: list[float] = []
    last: float | None = None
    for b in per_bin:
        if b:
            last = sum(bool(bad(e)) for e in b) / len(b)
        if last is not None:
            rates.append(last)
    return rates or [0.0]


def _window(
    all_series: Sequence[_Series],
    t0: float,
    bins: int,
    resources: Mapping[str, list[float]] | None = None,
) -> tuple[list[int], list[float]]:
    """Per second, the strongest evidence about one place, and the alarm seconds.

    Evidence is summed per *place*: an instance with the links into it (a fault there shows
    on both sides: its own silence, its callers' failed calls). A second where many places
    are off at once is discounted by their number: the host stalled (two shared cores), or
    the load moved, rather than one component failing.
    """
    binned = [(series, _binned(series, t0, bins)) for series in all_series]
    host_slow = [sum(b.marks["slow"][i] for _, b in binned) for i in range(bins)]
    host_timed = [sum(b.timed[i] for _, b in binned) for i in range(bins)]
    per_place: dict[str, list[float]] = {}
    for series, b in binned:
        place = per_place.setdefault(series.entity.instance, [0.0] * bins)
        for i, s in enumerate(_bin_alarms(b, host_slow, host_timed)):
            place[i] += min(s, MAX_EVIDENCE)
    for inst, evidence in (resources or {}).items():
        place = per_place.setdefault(inst, [0.0] * bins)
        for i, s in enumerate(evidence):
            place[i] += s
    # A fault is a change: a place off all along (a recovery loop's storm of calls, a chronic
    # hot spot) counts only by how much more it is off than it usually is.
    for place in per_place.values():
        usual = statistics.median(place)
        place[:] = [max(0.0, v - usual) for v in place]
    worst = [0.0] * bins
    for i in range(bins):
        values = [v[i] for v in per_place.values()]
        spread = sum(v >= WEAK_ALARM for v in values)
        worst[i] = max(values, default=0.0) / max(1, spread - SPREAD_FREE + 1)
    alarms = [i for i, s in enumerate(worst) if s >= ALARM]
    return alarms, worst


def _extend(cluster: list[int], worst: Sequence[float]) -> list[int]:
    """Grow a cluster of alarms over weaker ones after it (hysteresis), and by at most one
    second before it: a sparse fault's seconds are not all alarms, and what it leaves out
    would count as its baseline; its start is where the alarms start."""
    lo, hi = cluster[0], cluster[-1]
    if lo > 0 and worst[lo - 1] >= WEAK_ALARM:
        lo -= 1
    while True:
        after = [
            i
            for i in range(hi + 1, min(len(worst), hi + 1 + MERGE_GAP_S))
            if worst[i] >= WEAK_ALARM
        ]
        if not after:
            return list(range(lo, hi + 1))
        hi = after[-1]


def _clusters(alarms: Sequence[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in alarms:
        if out and i - out[-1][-1] <= MERGE_GAP_S:
            out[-1].append(i)
        else:
            out.append([i])
    return out


# -- signals -----------------------------------------------------------------------------------


@dataclass
class _Signal:
    kind: str
    severity: float
    text: str


def _split(
    events: Sequence[_Event], win: tuple[float, float], margin: float
) -> tuple[list[_Event], list[_Event]]:
    lo, hi = win
    inside = [e for e in events if lo <= e.t < hi]
    base = [e for e in events if e.t < lo - margin]
    return inside, base


def _rate_signal(
    kind: str, what: str, inside: Sequence[_Event], base: Sequence[_Event], bad: Any
) -> _Signal | None:
    k = sum(bool(bad(e)) for e in inside)
    n = len(inside)
    if n == 0 or k < MIN_EVENTS:
        return None
    kb = sum(bool(bad(e)) for e in base)
    p0 = max(RATE_FLOOR, (kb + 0.5) / (len(base) + 1.0))
    excess = k / n - kb / max(1, len(base))
    if binomial_surprise(k, n, p0) < SIGNIFICANT or excess <= 0:
        return None
    return _Signal(
        kind,
        _severity(excess, RATE_SCALE),
        f"{k} of {n} {what} ({k / n:.0%}; baseline {kb}/{len(base)})",
    )


def _slow_signal(
    kind: str, what: str, inside: Sequence[_Event], base: Sequence[_Event]
) -> _Signal | None:
    limits = _robust_limits(base)
    medians = _medians(base)
    judged = [e for e in inside if e.ms is not None and e.key in limits and e.key in medians]
    if len(judged) < MIN_EVENTS:
        return None
    slow = sum(e.ms is not None and e.ms > limits[e.key] for e in judged)
    base_judged = [e for e in base if e.ms is not None and e.key in limits]
    base_slow = sum(e.ms is not None and e.ms > limits[e.key] for e in base_judged)
    p0 = max(RATE_FLOOR, (base_slow + 0.5) / (len(base_judged) + 1.0))
    if slow < MIN_EVENTS or binomial_surprise(slow, len(judged), p0) < SIGNIFICANT:
        return None
    added = statistics.fmean(max(0.0, (e.ms or 0.0) - medians[e.key]) for e in judged)
    before = statistics.median([e.ms for e in base_judged if e.ms is not None])
    during = statistics.median([e.ms for e in judged if e.ms is not None])
    return _Signal(
        kind,
        _severity(added, SLOW_SCALE_MS),
        f"{slow} of {len(judged)} {what} slow; +{added:.0f} ms per request "
        f"(median {before:.0f} ms before, {during:.0f} ms during)",
    )


def _drop(
    inside: Sequence[_Event], base: Sequence[_Event], win_s: float, base_s: float
) -> tuple[float, float]:
    """(fraction of the expected calls that did not come, surprise of so few)."""
    if base_s <= 0:
        return 0.0, 0.0
    expected = len(base) / base_s * win_s
    if expected < MIN_EVENTS:
        return 0.0, 0.0
    return max(0.0, 1.0 - len(inside) / expected), _poisson_low(len(inside), expected)


# -- process metrics (optional) ----------------------------------------------------------------

Points = Sequence[tuple[float, float]]
RESOURCE_FLOORS = {"cpu": 0.01, "rss_mb": 1.0, "down": 0.1}
"""The smallest spread (cores; MB per second of growth; failed scrapes) a resource's series is
judged with. Requests in flight are not judged: they rise at every caller up the chain of a
slow callee (the balancer's most), so they say that something below is slow, not where."""
RESOURCE_SCALES = {"cpu": 0.05, "rss_mb": 40.0, "down": 0.3}
"""Severity scales: a twentieth of a core more (a process at rest uses a hundredth; a burn
gets little more on a saturated host); 40 MB; a third of the scrapes failed."""
PEAK_SAMPLES = 3
"""A level (CPU, failed scrapes) is judged by its peak mean over this many
consecutive samples in the window."""
SHARED_KINDS_FREE = 1
"""A span signal carried by this many instances (or links) is specific; beyond, each carrier's
severity is divided by the square root of their number: a host stall slows everything at once,
a fault in one place shows in that place."""


def _robust_z(values: Sequence[float], floor: float) -> list[float]:
    m = statistics.median(values)
    mad = statistics.median(abs(v - m) for v in values) * 1.4826
    return [(v - m) / max(mad, floor) for v in values]


def _tail(z: float) -> float:
    """``-log10`` of the normal upper tail beyond ``z``."""
    if z <= 0:
        return 0.0
    return min(MAX_EVIDENCE, -math.log10(max(1e-300, 0.5 * math.erfc(z / math.sqrt(2)))))


def _per_second(points: Points, t0: float, bins: int, *, growth: bool) -> list[float] | None:
    values: list[float | None] = [None] * bins
    for t, v in points:
        i = int((t - t0) // BIN_S)
        if 0 <= i < bins:
            values[i] = v
    known = [v for v in values if v is not None]
    if len(known) < max(5, bins // 2):
        return None
    filled: list[float] = []
    last: float = known[0]
    for value in values:
        if value is not None:
            last = value
        filled.append(last)
    if growth:
        return [0.0] + [b - a for a, b in itertools.pairwise(filled)]
    return filled


def _usable(metrics: Mapping[str, Mapping[str, Points]]) -> dict[str, Mapping[str, Points]]:
    """The metrics judged, by ``RESOURCE_FLOORS``' names: ``up`` becomes ``down`` (a failed
    scrape is 1), so that every series is judged by how far it rose above its usual."""
    out: dict[str, Mapping[str, Points]] = {}
    for metric, per in metrics.items():
        if metric == "up":
            out["down"] = {i: [(t, 1.0 - v) for t, v in pts] for i, pts in per.items()}
        elif metric in RESOURCE_FLOORS:
            out[metric] = per
    return out


def _resources(
    metrics: Mapping[str, Mapping[str, Points]], t0: float, bins: int
) -> dict[str, list[float]]:
    """Per instance and second: how far its CPU use, its memory growth or its failed scrapes
    are off its usual."""
    out: dict[str, list[float]] = {}
    for metric, per in metrics.items():
        if metric not in RESOURCE_FLOORS:
            continue
        for inst, points in per.items():
            values = _per_second(points, t0, bins, growth=metric == "rss_mb")
            if values is None:
                continue
            evidence = [_tail(z) for z in _robust_z(values, RESOURCE_FLOORS[metric])]
            place = out.setdefault(inst, [0.0] * bins)
            out[inst] = [a + b for a, b in zip(place, evidence, strict=True)]
    return out


def _resource_signals(
    metrics: Mapping[str, Mapping[str, Points]], win: tuple[float, float], margin: float
) -> list[tuple[str, _Signal]]:
    """CPU used beyond the instance's baseline, memory grown beyond it, in the window."""
    out = []
    for metric, per in metrics.items():
        floor = RESOURCE_FLOORS.get(metric)
        if floor is None:
            continue
        for inst, points in per.items():
            base = [v for t, v in points if t < win[0] - margin]
            inside = [v for t, v in points if win[0] <= t < win[1]]
            if len(base) < 5 or len(inside) < 2:
                continue
            if metric != "rss_mb":
                before = statistics.median(base)
                spread = max(floor, statistics.median(abs(v - before) for v in base) * 1.4826)
                # The peak of a few seconds, not the window's mean: a burn starved of the
                # shared cores, a restart's failed scrapes, last less than the window.
                during = max(
                    statistics.fmean(inside[i : i + PEAK_SAMPLES])
                    for i in range(max(1, len(inside) - PEAK_SAMPLES + 1))
                )
                change = during - before
                text = {
                    "cpu": f"CPU {before:.2f} cores before, {during:.2f} at its peak",
                    "down": f"{during:.0%} of its scrapes failed ({before:.0%} before)",
                }[metric]
            else:
                steps = [b - a for a, b in itertools.pairwise(base)]
                usual = statistics.median(steps)
                spread = max(floor, statistics.median(abs(v - usual) for v in steps) * 1.4826)
                # The peak, not the last value: a leak's memory is freed when it is rolled back.
                grown = max(inside) - inside[0] - usual * (len(inside) - 1)
                change, spread = grown, spread * math.sqrt(len(inside))
                text = f"resident memory grew {max(inside) - inside[0]:.0f} MB in the window"
            if change / spread >= RESOURCE_Z:
                out.append(
                    (inst, _Signal(metric, _severity(change, RESOURCE_SCALES[metric]), text))
                )
    return out


# -- the entry point ---------------------------------------------------------------------------


def localize_blind(
    spans: Sequence[SpanRecord], *, metrics: Mapping[str, Mapping[str, Points]] | None = None
) -> BlindResult:
    """Find the anomaly window in ``spans`` and rank suspects (instances and links) for it.

    ``metrics`` (optional): per-instance process metrics over the same time (``cpu`` in cores,
    ``rss_mb``), as ``chaos.procmetrics`` reads them from Prometheus.
    """
    if len(spans) < 50:
        return BlindResult(
            None, (), f"too few spans ({len(spans)}; at least 50 needed)", len(spans)
        )
    t0 = min(s.start_ns for s in spans) / 1e9
    t1 = max(s.start_ns for s in spans) / 1e9
    bins = max(1, int((t1 - t0) // BIN_S))  # whole seconds only: a last partial one looks quiet
    instances, links, registrations = _build(spans)
    metrics = _usable(metrics or {})
    resources = _resources(metrics, t0, bins)
    alarms, worst = _window([*instances.values(), *links.values()], t0, bins, resources)
    # A change needs a before: alarms in the first seconds (what the previous events left)
    # cannot start a window.
    lead = int((MIN_BASELINE_S + MARGIN_S) // BIN_S)
    alarms = [i for i in alarms if i >= lead]
    if not alarms:
        peak = max(worst[lead:], default=0.0)
        return BlindResult(
            None,
            (),
            f"no anomaly: no second after the first {lead} deviates enough "
            f"(strongest evidence {peak:.1f}, an alarm needs {ALARM:g})",
            len(spans),
        )

    def rank(cluster: list[int]) -> tuple[BlindWindow, list[BlindSuspect], str]:
        # Judged over at least JUDGE_MIN_S: a quiet place's fault shows in few of its seconds.
        end = min(bins, max(cluster[-1] + 1, cluster[0] + int(JUDGE_MIN_S // BIN_S)))
        win = (t0 + cluster[0] * BIN_S, t0 + end * BIN_S)
        first = min(i for i in cluster if worst[i] >= ALARM)
        window = BlindWindow(win[0], win[1], t0 + (first + 1) * BIN_S + EXPORT_S, len(cluster))
        win_s = win[1] - win[0]
        # The baseline is what came before the change: after it, a fault may linger (a restarted
        # instance warming up, a queue draining) and would count as normal.
        base_s = max(0.0, win[0] - MARGIN_S - t0)
        if base_s < MIN_BASELINE_S:
            return window, [], f"the window leaves under {MIN_BASELINE_S} s of baseline"

        signals: dict[str, list[_Signal]] = defaultdict(list)
        drops: dict[str, float] = {}
        for name, series in instances.items():
            inside, base = _split(series.events, win, MARGIN_S)
            sigs = signals[name]
            if s := _rate_signal(
                "errors", "requests failed here", inside, base, lambda e: e.bad_error
            ):
                sigs.append(s)
            if s := _slow_signal("slow-self", "requests", inside, base):
                sigs.append(s)
            frac, surprise = _drop(inside, base, win_s, base_s)
            drops[name] = _drop(*_split(series.arrivals, win, MARGIN_S), win_s, base_s)[0]
            if surprise >= SIGNIFICANT:
                sigs.append(
                    _Signal("missing", frac, f"{frac:.0%} of the expected requests never came")
                )
        link_signals: dict[str, list[_Signal]] = defaultdict(list)
        for name, series in links.items():
            inside, base = _split(series.events, win, MARGIN_S)
            sigs = link_signals[name]
            if s := _rate_signal(
                "no-answer", "calls got no answer", inside, base, lambda e: e.lost
            ):
                sigs.append(s)
            if s := _rate_signal("errors", "calls failed", inside, base, lambda e: e.bad_error):
                sigs.append(s)
            if s := _slow_signal("slow-wire", "calls", inside, base):
                sigs.append(s)
            frac, surprise = _drop(inside, base, win_s, base_s)
            caller_drop = drops.get(series.entity.caller_instance, 0.0)
            if surprise >= SIGNIFICANT and frac - caller_drop > 0.2:
                sigs.append(
                    _Signal(
                        "missing",
                        _severity(frac - caller_drop, DROP_SCALE),
                        f"{frac:.0%} of the expected calls never came "
                        f"(caller lost {caller_drop:.0%})",
                    )
                )
        # Every caller's calls into an instance together: a sparse callee's callers may each
        # see too few failures to be significant, while all of them see its ingress fail.
        for callee, sig in _ingress_signals(instances, links, win):
            signals[callee].append(sig)
        # Calls into an instance that stopped arriving, while its callers did not lose theirs.
        for name, sigs in signals.items():
            for s in sigs:
                if s.kind == "missing":
                    callers = instances[name].callers
                    explained = max((drops.get(c, 0.0) for c in callers), default=0.0)
                    s.severity = _severity(s.severity - explained, DROP_SCALE)
            signals[name] = [s for s in sigs if s.severity > 0.05]
        for inst, sig in _resource_signals(metrics, win, MARGIN_S):
            if inst not in instances:  # it served nothing in the spans given, yet it ran
                instances[inst] = _Series(Entity("instance", inst, inst.rsplit("-", 1)[0]))
            signals[inst].append(sig)
        for ts, _, inst in registrations:
            if win[0] - MARGIN_S <= ts < win[1] + MARGIN_S and inst in instances:
                signals[inst].append(
                    _Signal("restart", RESTART_SEVERITY, "registered again (a restart)")
                )

        suspects = _suspects(instances, links, signals, link_signals, win)
        if not suspects:
            return window, [], "a window was found but no entity deviates in it"
        return window, suspects, f"{len(suspects)} suspects"

    # The strongest cluster of alarms is the window; the next ones add their suspects below
    # its own (a host stall may outweigh a quiet fault: the fault still gets a rank).
    clusters = sorted(_clusters(alarms), key=lambda c: (-sum(worst[i] for i in c), c[0]))
    window, suspects, reason = None, [], ""
    for cluster in clusters[:CLUSTERS]:
        w, found, why = rank(_extend(cluster, worst))
        if window is None or not suspects:
            window, suspects, reason = w, list(found), why
        else:
            seen = {s.name for s in suspects}
            suspects.extend(s for s in found if s.name not in seen)
    return BlindResult(window, tuple(suspects), reason, len(spans))


INGRESS_KINDS: tuple[tuple[str, str, Any], ...] = (
    ("no-answer", "calls got no answer", lambda e: e.lost),
    ("errors", "calls failed", lambda e: e.bad_error),
)
VETO_RISE = 0.1
"""A caller whose share of bad calls into an instance rose by less than this is not hurt."""


def _ingress_signals(
    instances: Mapping[str, _Series], links: Mapping[str, _Series], win: tuple[float, float]
) -> list[tuple[str, _Signal]]:
    """Per instance, the calls of all its callers into it judged as one series: significant
    when together they fail, unless a caller with enough calls is not hurt (then it is a link,
    not the instance's ingress)."""
    into: dict[str, list[_Series]] = defaultdict(list)
    for series in links.values():
        into[series.entity.instance].append(series)
    out = []
    for callee, members in into.items():
        if callee not in instances or len(members) < 2:
            continue  # one caller: its link's own signal says it all
        events = sorted((e for m in members for e in m.events), key=lambda e: e.t)
        inside, base = _split(events, win, MARGIN_S)
        for kind, what, bad in INGRESS_KINDS:
            sig = _rate_signal(kind, what, inside, base, bad)
            if sig is None or any(_unhurt(m, win, bad) for m in members):
                continue
            out.append(
                (
                    callee,
                    _Signal(f"ingress-{kind}", sig.severity, f"{len(members)} callers: {sig.text}"),
                )
            )
    return out


def _unhurt(series: _Series, win: tuple[float, float], bad: Any) -> bool:
    inside, base = _split(series.events, win, MARGIN_S)
    if len(inside) < MIN_CALLS_TO_VETO:
        return False
    before = sum(bool(bad(e)) for e in base) / max(1, len(base))
    return sum(bool(bad(e)) for e in inside) / len(inside) < before + VETO_RISE


def _score(sigs: Sequence[_Signal]) -> float:
    sev = sorted((s.severity for s in sigs), reverse=True)
    return sev[0] + 0.1 * sum(sev[1:]) if sev else 0.0


def _suspects(
    instances: Mapping[str, _Series],
    links: Mapping[str, _Series],
    signals: Mapping[str, list[_Signal]],
    link_signals: Mapping[str, list[_Signal]],
    win: tuple[float, float],
) -> list[BlindSuspect]:
    out: list[BlindSuspect] = []
    found: list[tuple[str, Entity, list[_Signal]]] = []
    into: dict[str, list[str]] = defaultdict(list)
    for name, series in links.items():
        into[series.entity.instance].append(name)
    merged: set[str] = set()
    for callee, names in into.items():
        anomalous = [n for n in names if link_signals.get(n)]
        if not anomalous or callee not in instances:
            continue
        vetoes = [
            n
            for n in names
            if not link_signals.get(n)
            and sum(win[0] <= e.t < win[1] for e in links[n].events) >= MIN_CALLS_TO_VETO
        ]
        if vetoes or (links[anomalous[0]].forwarder and len(anomalous) < len(names)):
            continue
        merged.update(anomalous)
    for name, series in instances.items():
        sigs = list(signals.get(name, []))
        net = [s for n in into.get(name, []) if n in merged for s in link_signals[n]]
        if net:
            per_kind: dict[str, list[float]] = defaultdict(list)
            for n in into[name]:
                if n in merged:
                    for s in link_signals[n]:
                        per_kind[s.kind].append(s.severity)
            # Per caller, not per call: the median caller's severity of each kind.
            have = {s.kind for s in sigs}
            sigs.extend(
                _Signal(f"ingress-{k}", statistics.median(v), f"{len(v)} callers: {k}")
                for k, v in per_kind.items()
                if f"ingress-{k}" not in have
            )
            sigs.extend(_Signal(s.kind, 0.0, s.text) for s in net)
        if sigs:
            found.append((name, series.entity, sigs))
    for name, sigs in link_signals.items():
        if name in merged or not sigs:
            continue
        found.append((name, links[name].entity, list(sigs)))
    _discount_shared(found)
    for name, entity, sigs in found:
        if _score(sigs) <= 0:
            continue
        inside_net = max((s.severity for s in sigs if s.kind.startswith("ingress")), default=0.0)
        inside_svc = max(
            (s.severity for s in sigs if not s.kind.startswith("ingress")), default=0.0
        )
        out.append(
            BlindSuspect(
                name,
                entity,
                "network" if entity.kind == "link" or inside_net > inside_svc else "in-service",
                _score(sigs),
                tuple(f"{s.kind}: {s.text} [{s.severity:.2f}]" for s in sigs if s.severity > 0),
            )
        )
    out.sort(key=lambda s: (-s.score, s.name))
    return out


OWN_KINDS = frozenset({"cpu", "rss_mb", "down", "restart"})
"""Signals of one process's own telemetry, never discounted as shared."""


def _discount_shared(found: Sequence[tuple[str, Entity, list[_Signal]]]) -> None:
    """Divide each span signal's severity by the square root of how many suspects carry its
    kind (beyond ``SHARED_KINDS_FREE``): what everything shows at once (a host stall, load
    that moved) says little about where, a process's own CPU, memory or failed scrapes do."""
    carriers: Counter[str] = Counter()
    for _, _, sigs in found:
        kinds = {s.kind.removeprefix("ingress-") for s in sigs if s.severity > 0}
        carriers.update(kinds - OWN_KINDS)
    for _, _, sigs in found:
        for s in sigs:
            k = carriers[s.kind.removeprefix("ingress-")]
            if s.kind not in OWN_KINDS and k > SHARED_KINDS_FREE:
                s.severity /= math.sqrt(k - SHARED_KINDS_FREE + 1)


# -- an experiment's journal section -----------------------------------------------------------

FRAME_LEAD_S = 10.0
"""The telemetry handed over starts this long before the method (the quiet run-up)."""
FRAME_TAIL_S = 3.0


def _frame(journal: Mapping[str, Any]) -> tuple[float, float] | None:
    """The run's method, as the timeline has it (the experiment's frame, not a fault's)."""
    phases = {p.get("phase"): p for p in journal.get("timeline", [])}
    method = phases.get("method")
    if method is None or method.get("start") is None:
        return None
    start = float(method["start"]) - FRAME_LEAD_S
    warmup = phases.get("warmup")
    if warmup is not None and warmup.get("start") is not None:
        start = max(start, float(warmup["start"]) + 3.0)  # not the load's ramp-up
    end = method.get("end") or journal.get("ended_at")
    if end is None:
        return None
    return start, float(end) + FRAME_TAIL_S


def blind_section(journal: Mapping[str, Any], spans: Sequence[SpanRecord]) -> dict[str, Any] | None:
    """The journal's ``blind_localization``: the spans of the method alone, located blind.

    The journal gives the frame (the method's start and end) and, afterwards, the truth to
    score against; nothing of it reaches ``localize_blind``.
    """
    from chaos.rcascore import rank_of, truth_from_units

    applied = [f for f in journal.get("faults", []) if f.get("applied_at") is not None]
    frame = _frame(journal)
    if not applied or frame is None:
        return None
    lo, hi = int(frame[0] * 1e9), int(frame[1] * 1e9)
    result = localize_blind([s for s in spans if lo <= s.start_ns < hi])
    suspects = [
        {
            "component": s.name,
            "service": s.entity.service,
            "where": s.where,
            "score": round(s.score, 3),
            "evidence": list(s.evidence),
        }
        for s in result.suspects[:TOP]
    ]
    reason = result.reason
    if result.window is not None:
        w = result.window
        reason = (
            f"anomaly window found {w.start_s - frame[0]:.0f}-{w.end_s - frame[0]:.0f} s into "
            f"the telemetry given ({frame[1] - frame[0]:.0f} s); {reason}"
        )
    faults = []
    for entry in applied:
        truth = truth_from_units(str(entry.get("target", "")), entry.get("units", []))
        rank = rank_of([s.entity for s in result.suspects], truth)
        located = (
            "undetermined"
            if not result.suspects
            else ("no (absent)" if rank is None else f"{'yes' if rank == 1 else 'no'} (#{rank})")
        )
        faults.append(
            {
                "fault_id": entry.get("id"),
                "type": entry.get("type"),
                "truth": {
                    "target": entry.get("target"),
                    "instances": sorted(truth.instances),
                    "links": [truth.describe()] if truth.kind == "link" else [],
                },
                "status": "located" if rank == 1 else "not_located",
                "located": located,
                "rank": rank,
                "reason": reason,
                "suspects": suspects,
            }
        )
    first = sum(f["rank"] == 1 for f in faults)
    return {
        "frame": {"start": frame[0], "end": frame[1]},
        "window": result.to_json()["window"],
        "faults": faults,
        "headline": faults[0]["located"] if len(faults) == 1 else f"{first}/{len(faults)} #1",
    }


def blind_localization_run(run_dir: Path, journal: Mapping[str, Any]) -> dict[str, Any] | None:
    """``blind_section`` over the run folder's span files (blocking I/O)."""
    traces = run_dir / "traces"
    if not traces.is_dir() or not any(traces.glob("*.jsonl")):
        return None
    return blind_section(journal, load_spans(run_dir))
