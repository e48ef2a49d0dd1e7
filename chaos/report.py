"""A self-contained HTML report of one experiment run, and an index page for a demo.

``write_report(journal.json)`` writes ``report.html`` next to the journal: the verdict and why,
the hypothesis, a timeline of what users saw (request rate, error ratio, p99 from Locust's
``--csv-full-history`` file) with the phases, the fault windows and the safeguard trips drawn on
it, the probes, the faults, the data audit and — when the journal has one — the localisation
result. ``write_demo_index(run_dir, results)`` writes ``demo.html`` linking every report.

The pages are Jinja2 templates (``chaos/templates/``, autoescaped): this module reads the
journal into plain data — strings and numbers already formatted — and the templates lay it out.
The charts are inline SVG drawn here rather than with a plotting library: a report must open
from a file, offline, with no JavaScript, and the few shapes it needs (bars and lines over
time, shaded windows, a bar list) take less code than adapting a library would; matplotlib
would be a heavy new dependency for three small panels. They are the only markup handed to the
templates, marked safe deliberately in ``timeline_svg`` and ``sparkline_svg``: every text drawn
in them goes through ``_e`` first.

The journal is read defensively: a crashed or older run can lack any field, so every access
goes through small coercing helpers and a missing part renders as "not recorded", never as an
exception.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup

from load.stats import AGGREGATED, LocustStats
from management.trace_ui import lens_url
from observability.logs import get_logger

if TYPE_CHECKING:
    from chaos.runner import RunResult

__all__ = [
    "DEMO_INDEX_NAME",
    "REPORT_NAME",
    "try_write_report",
    "write_demo_index",
    "write_report",
]

REPORT_NAME = "report.html"
DEMO_INDEX_NAME = "demo.html"
ERROR_WINDOW_S = 5.0
"""Trailing window of the error-ratio line (the safeguards' usual window)."""
MAX_EXTRA_SERIES = 3

# -- colours -------------------------------------------------------------------------------------
OK_BAR = "#8aa6d6"
FAIL = "#d43d3d"
LATENCY = "#2f4f8f"
EXTRA = ("#8e44ad", "#1f9e89", "#c27c0e")
FAULT_FILL = "#f6a04d"
FAULT_EDGE = "#d9731a"
FAULT_TEXT = "#a4520c"
ABORT = "#b3142b"
GRID = "#e6e8ec"
AXIS = "#9aa1ab"
INK = "#1f2430"
MUTED = "#6b7280"
PHASE_FILL = {
    "preflight": "#eef0f3",
    "warmup": "#e3e7ed",
    "steady-state-before": "#d8efe0",
    "method": "#dfe4f7",
    "settle": "#e3e7ed",
    "steady-state-after": "#d8efe0",
    "load-stop": "#eef0f3",
    "verify": "#fbeccb",
    "localize": "#eee4f7",
}
PHASE_SHORT = {
    "steady-state-before": "steady state",
    "steady-state-after": "steady state",
    "load-stop": "stop",
    "preflight": "preflight",
}


# -- reading the journal defensively -------------------------------------------------------------
def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _d(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _f(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        out = float(value)
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def _s(value: object, default: str = "") -> str:
    return default if value is None else str(value)


def _num(value: object) -> str:
    """A probe value as a person reads it: ``200``, ``0.09091``, ``n/a``."""
    number = _f(value)
    if number is None:
        return "n/a" if value is None else str(value)
    if number == int(number) and abs(number) < 1e12:
        return str(int(number))
    return f"{number:.4g}"


def _pct(ratio: float | None) -> str:
    if ratio is None:
        return "n/a"
    digits = 2 if ratio < 0.1 else 1
    return f"{ratio * 100:.{digits}f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.0f} ms"


def _clock(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


# -- the run, normalised --------------------------------------------------------------------------
@dataclass(frozen=True)
class Phase:
    name: str
    start: float
    end: float | None


@dataclass(frozen=True)
class Window:
    """A fault's time in effect (or a marker when ``end`` equals ``start``)."""

    label: str
    detail: str
    start: float
    end: float | None
    status: str


@dataclass(frozen=True)
class Marker:
    label: str
    at: float
    detail: str


@dataclass(frozen=True)
class Threshold:
    panel: str
    """``rate``, ``error`` or ``latency``."""
    value: float
    label: str
    safeguard: bool


@dataclass
class Track:
    """One request name's history: per Locust row, cumulative counts and percentiles."""

    ts: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    percentiles: list[dict[str, float]] = field(default_factory=list)

    def rates(self) -> list[tuple[float, float, float, float]]:
        """(start, end, ok per s, failed per s) between consecutive rows."""
        out = []
        for i in range(1, len(self.ts)):
            dt = self.ts[i] - self.ts[i - 1]
            if dt <= 0:
                continue
            req = max(0, self.requests[i] - self.requests[i - 1])
            fail = min(req, max(0, self.failures[i] - self.failures[i - 1]))
            out.append((self.ts[i - 1], self.ts[i], (req - fail) / dt, fail / dt))
        return out

    def error_ratio(self, window: float) -> list[tuple[float, float | None]]:
        """Failures over requests in the trailing ``window`` seconds, at each row."""
        out: list[tuple[float, float | None]] = []
        j = 0
        for i, ts in enumerate(self.ts):
            while j + 1 < i and self.ts[j + 1] <= ts - window:
                j += 1
            base_req, base_fail = (self.requests[j], self.failures[j]) if j < i else (0, 0)
            req = self.requests[i] - base_req
            fail = self.failures[i] - base_fail
            out.append((ts, fail / req if req > 0 else None))
        return out

    def percentile(self, p: str) -> list[tuple[float, float | None]]:
        return [(ts, pct.get(p)) for ts, pct in zip(self.ts, self.percentiles, strict=True)]


def read_history(path: Path) -> dict[str, Track]:
    """Locust's full-history CSV as one track per request name (rows of one name summed)."""
    stats = LocustStats(path)
    stats.refresh()
    grouped: dict[str, dict[float, list[Any]]] = {}
    for row in stats.rows:
        grouped.setdefault(row.name, {}).setdefault(row.timestamp, []).append(row)
    tracks: dict[str, Track] = {}
    for name, by_ts in grouped.items():
        track = tracks[name] = Track()
        for ts, rows in sorted(by_ts.items()):
            track.ts.append(ts)
            track.requests.append(sum(r.requests for r in rows))
            track.failures.append(sum(r.failures for r in rows))
            merged: dict[str, float] = {}
            for r in rows:
                for key, value in r.percentiles.items():
                    merged[key] = max(value, merged.get(key, value))
            track.percentiles.append(merged)
    return tracks


@dataclass
class Run:
    """What the report shows, taken from a journal that may lack any part."""

    folder: Path
    data: dict[str, Any]
    title: str
    hypothesis: str
    expect: str
    verdict: str
    reason: str
    outcome: str
    as_expected: bool | None
    started_at: float | None
    ended_at: float | None
    phases: list[Phase]
    probes: list[dict[str, Any]]
    faults: list[dict[str, Any]]
    windows: list[Window]
    markers: list[Marker]
    tracks: dict[str, Track]
    history_note: str
    specs: dict[str, dict[str, Any]]
    load: dict[str, Any]
    failures: list[tuple[str, str, int]] = field(default_factory=list)
    """Locust's failures: (request, error, occurrences), most frequent first."""

    @property
    def t0(self) -> float | None:
        starts = [p.start for p in self.phases]
        if self.started_at is not None:
            return self.started_at
        return min(starts) if starts else None

    def rel(self, ts: float | None) -> str:
        t0 = self.t0
        if ts is None or t0 is None:
            return "-"
        return f"{ts - t0:+.1f} s"


def _probe_specs(experiment: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The experiment's probe specs by the name the runner gives their results."""
    out: dict[str, dict[str, Any]] = {}
    for section in ("steady_state", "verify"):
        for i, spec in enumerate(_l(experiment.get(section))):
            spec = _d(spec)
            name = _s(spec.get("name"))
            if not name and spec.get("type") == "locust":
                name = f"{_s(spec.get('request'), AGGREGATED).lower()}-{_s(spec.get('metric'))}"
            if not name:
                name = f"{section}-{i + 1}-{_s(spec.get('type'))}"
            out.setdefault(name, {**spec, "_section": section})
    return out


def _fault_window(fault: Mapping[str, Any]) -> Window | None:
    start = _f(fault.get("applied_at")) or _f(fault.get("planned_at"))
    if start is None:
        return None
    name = _s(fault.get("name")) or _s(fault.get("id"), "fault")
    units = [_s(_d(u).get("id")) for u in _l(fault.get("units")) if _d(u).get("id")]
    where = ", ".join(units) or _s(fault.get("target"))
    detail = f"{_s(fault.get('type'), 'fault')} on {where}" if where else _s(fault.get("type"))
    status = _s(fault.get("status"), "unknown")
    end = _f(fault.get("rolled_back_at"))
    if status == "apply_failed":
        end = start
    return Window(name, detail, start, end, status)


def _markers(data: Mapping[str, Any]) -> list[Marker]:
    out = []
    for trip in _l(data.get("safeguards")):
        trip = _d(trip)
        at = _f(trip.get("tripped_at"))
        if at is None:
            continue
        name = _s(trip.get("name"), "safeguard")
        value, tol = trip.get("value"), _s(trip.get("tolerance"))
        out.append(Marker(f"safeguard {name} tripped", at, f"{_num(value)} outside {tol}".strip()))
    for event in _l(data.get("events")):
        event = _d(event)
        text, at = _s(event.get("text")), _f(event.get("at"))
        if at is not None and "rolling back every fault" in text:
            out.append(Marker(f"interrupted ({text.split(':')[0]})", at, text))
    return out


def _report_path(folder: Path, load: Mapping[str, Any], key: str, default: str) -> Path:
    """A Locust file next to the journal if there is one (reports travel with their folder)."""
    recorded = _s(_d(load.get("reports")).get(key))
    if recorded:
        local = folder / Path(recorded).name
        return local if local.exists() else Path(recorded)
    return folder / default


def read_failures(path: Path) -> list[tuple[str, str, int]]:
    """Locust's ``_failures.csv``: (request, error, occurrences), most frequent first."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        count = _f(row.get("Occurrences"))
        name = f"{_s(row.get('Method'))} {_s(row.get('Name'))}".strip()
        out.append((name, _s(row.get("Error")), int(count or 0)))
    return sorted(out, key=lambda r: -r[2])


def load_run(journal_path: Path) -> Run:
    """Read ``journal_path`` into a ``Run``; raises only when the file cannot be read as JSON."""
    raw = json.loads(journal_path.read_text(encoding="utf-8"))
    data = _d(raw)
    folder = journal_path.parent
    exp = _d(data.get("experiment"))
    phases = []
    for entry in _l(data.get("timeline")):
        entry = _d(entry)
        start = _f(entry.get("start"))
        if start is not None:
            phases.append(Phase(_s(entry.get("phase"), "?"), start, _f(entry.get("end"))))
    faults = [_d(f) for f in _l(data.get("faults"))]
    load = _d(data.get("load"))
    tracks: dict[str, Track] = {}
    failures: list[tuple[str, str, int]] = []
    note = ""
    if data.get("load") is None:
        note = "no load ran in this experiment"
    else:
        path = _report_path(folder, load, "history_csv", "locust_stats_history.csv")
        try:
            tracks = read_history(path)
            failures = read_failures(
                _report_path(folder, load, "failures_csv", "locust_failures.csv")
            )
        except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
            note = f"Locust's reports could not be read ({path.name}: {exc})"
        if not tracks and not note:
            note = f"Locust's history is empty or missing ({path})"
    as_expected = data.get("as_expected")
    return Run(
        folder=folder,
        data=data,
        title=_s(exp.get("title")) or folder.name,
        hypothesis=_s(exp.get("hypothesis")).strip(),
        expect=_s(exp.get("expect"), "hold"),
        verdict=_s(data.get("verdict")) or "unfinished",
        reason=_s(data.get("reason")),
        outcome=_s(data.get("outcome")),
        as_expected=as_expected if isinstance(as_expected, bool) else None,
        started_at=_f(data.get("started_at")),
        ended_at=_f(data.get("ended_at")),
        phases=phases,
        probes=[_d(p) for p in _l(data.get("probes"))],
        faults=faults,
        windows=[w for w in map(_fault_window, faults) if w is not None],
        markers=_markers(data),
        tracks=tracks,
        history_note=note,
        specs=_probe_specs(exp),
        load=load,
        failures=failures,
    )


# -- the verdict ----------------------------------------------------------------------------------
def verdict_badge(verdict: str, expect: str) -> tuple[str, str]:
    """(label, css class) of the badge: what happened, read against what was expected."""
    if verdict == "failed" and expect == "deviate":
        return "drawback shown", "shown"
    if verdict == "passed" and expect == "deviate":
        return "drawback not shown", "failed"
    if verdict in ("passed", "failed", "aborted", "error"):
        return verdict, verdict
    return verdict or "unfinished", "unknown"


def _why(run: Run) -> str:
    if run.verdict == "passed":
        n = sum(1 for p in run.probes if p.get("ok") is True)
        base = f"{n} of {len(run.probes)} probes within tolerance"
        if n == len(run.probes):
            base = f"every probe stayed within its tolerance ({base})"
        return base if run.expect != "deviate" else base + ": the expected drawback did not show"
    if run.verdict == "failed" and run.expect == "deviate":
        return "as expected, the system deviated: " + run.reason.removeprefix("deviated: ")
    if run.verdict == "unfinished":
        return "the journal has no verdict: the runner did not finish (crashed or still running)"
    return run.reason or run.outcome or "no reason recorded"


# -- SVG helpers -----------------------------------------------------------------------------------
def _nice_step(span: float, target: int) -> float:
    if span <= 0:
        return 1.0
    raw = span / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * mag:
            return m * mag
    return 10.0 * mag


def _ticks(lo: float, hi: float, target: int) -> list[float]:
    step = _nice_step(hi - lo, target)
    first = math.ceil(lo / step - 1e-9) * step
    out: list[float] = []
    value = first
    while value <= hi + 1e-9 and len(out) < 50:
        out.append(round(value, 10))
        value += step
    return out


def _time_ticks(lo: float, hi: float) -> list[float]:
    """Whole, round seconds (1, 2, 5, 10, 15, 30 s ... steps), at most about a dozen."""
    steps = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 1800, 3600)
    step = next((s for s in steps if (hi - lo) / s <= 12), None)
    if step is None:  # not a run's length (a clock gone wrong): any dozen round ticks
        return _ticks(lo, hi, 12)
    first = math.ceil(lo / step) * step
    return [float(t) for t in range(first, math.floor(hi) + 1, step)]


def _text_width(text: str, size: float = 11.0) -> float:
    return len(text) * size * 0.56


def _t(x: float, y: float, text: str, *, size: float = 11, fill: str = INK, **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{_e(v)}"' for k, v in attrs.items())
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size:g}" fill="{fill}"{extra}>{_e(text)}</text>'
    )


@dataclass
class _Scale:
    lo: float
    hi: float
    a: float
    b: float

    def __call__(self, value: float) -> float:
        if self.hi == self.lo:
            return self.a
        return self.a + (value - self.lo) / (self.hi - self.lo) * (self.b - self.a)


def _lanes(items: Sequence[tuple[float, float]], gap: float = 8.0) -> list[int]:
    """Greedy lane per (x_start, x_end) label so labels of one lane never overlap."""
    ends: list[float] = []
    out = []
    for start, end in items:
        for lane, last in enumerate(ends):
            if start >= last + gap:
                ends[lane] = end
                out.append(lane)
                break
        else:
            ends.append(end)
            out.append(len(ends) - 1)
    return out


def _polyline(points: Iterable[tuple[float, float | None]], x: _Scale, y: _Scale) -> list[str]:
    """Path data for a line with gaps where the value is missing."""
    segments: list[list[str]] = [[]]
    for t, v in points:
        if v is None:
            if segments[-1]:
                segments.append([])
            continue
        segments[-1].append(f"{x(t):.1f},{y(min(v, y.hi)):.1f}")
    return [" ".join(s) for s in segments if s]


# -- the timeline chart ----------------------------------------------------------------------
W = 1000.0
LEFT, RIGHT = 64.0, 18.0
PANEL_H = 96.0
PANEL_TITLE = 20.0
PANEL_GAP = 12.0


@dataclass
class _Panel:
    key: str
    title: str
    legend: list[tuple[str, str, bool]]
    """(label, colour, dashed)."""
    fmt: Any
    ymax: float
    body: list[str] = field(default_factory=list)


def _thresholds(run: Run) -> list[tuple[Threshold, str, str]]:
    """(threshold, request, metric) of every Locust probe and safeguard with a limit."""
    exp = _d(run.data.get("experiment"))
    probes = [(_d(p), _s(_d(p).get("name")), False) for p in _l(exp.get("steady_state"))]
    for guard in map(_d, _l(exp.get("safeguards"))):
        spec = _d(guard.get("probe"))
        probes.append((spec, _s(guard.get("name")) or _s(spec.get("name")), True))
    out = []
    for spec, _name, is_guard in probes:
        if spec.get("type") != "locust":
            continue
        metric = _s(spec.get("metric"))
        panel = {"error_ratio": "error", "rps": "rate", "p50": "latency", "p95": "latency"}.get(
            metric, "latency" if metric == "p99" else None
        )
        tol = _d(spec.get("tolerance"))
        limit = _f(tol.get("max"))
        if limit is None and metric == "rps":
            limit = _f(tol.get("min"))
        if panel is None or limit is None:
            continue
        request = _s(spec.get("request"), AGGREGATED)
        shown = {"error": _pct(limit), "latency": _ms(limit)}.get(panel, _num(limit))
        who = "" if request == AGGREGATED else f"{request} "
        kind = "safeguard" if is_guard else "limit"
        label = f"{kind} {who}{shown}"
        out.append((Threshold(panel, limit, label, is_guard), request, metric))
    return out


def timeline_svg(run: Run) -> Markup:
    """Request rate, error ratio and p99 over time with phases, faults and aborts drawn on.

    Markup for the template: every text in it (titles, labels, tooltips) is escaped here.
    """
    tracks = run.tracks
    agg = tracks.get(AGGREGATED)
    times = [p.start for p in run.phases] + [p.end for p in run.phases if p.end is not None]
    times += [w.start for w in run.windows] + [w.end for w in run.windows if w.end is not None]
    times += [m.at for m in run.markers]
    if agg is not None:
        times += agg.ts
    for value in (run.started_at, run.ended_at):
        if value is not None:
            times.append(value)
    if not times:
        return Markup('<p class="muted">Nothing was recorded on the timeline.</p>')
    t0 = run.t0 if run.t0 is not None else min(times)
    lo, hi = min(times), max(times)
    if hi - lo < 1:
        hi = lo + 1
    x = _Scale(lo, hi, LEFT, W - RIGHT)
    thresholds = _thresholds(run)

    # series beyond "Aggregated" that a probe looks at
    error_names = [AGGREGATED]
    latency_keys = [(AGGREGATED, "99%")]
    for _, request, metric in thresholds:
        if request not in tracks:
            continue
        if metric == "error_ratio" and request not in error_names:
            error_names.append(request)
        key = (request, metric.removeprefix("p") + "%")
        if metric in ("p50", "p95", "p99") and key not in latency_keys:
            latency_keys.append(key)
    # and the requests that failed most: which calls users saw fail
    failing = sorted(
        (n for n, tr in tracks.items() if n != AGGREGATED and tr.failures and tr.failures[-1]),
        key=lambda n: -tracks[n].failures[-1],
    )
    error_names += [n for n in failing[:2] if n not in error_names]
    error_names = error_names[: 1 + MAX_EXTRA_SERIES]
    latency_keys = latency_keys[: 1 + MAX_EXTRA_SERIES]

    panels: list[_Panel] = []
    if agg is not None:
        rates = agg.rates()
        rate_max = max((ok + bad for _, _, ok, bad in rates), default=0.0)
        panels.append(
            _Panel(
                "rate",
                "requests per second",
                [("succeeded", OK_BAR, False), ("failed", FAIL, False)],
                _num,
                rate_max,
            )
        )
        errors = {n: tracks[n].error_ratio(ERROR_WINDOW_S) for n in error_names if n in tracks}
        emax = max((v for s in errors.values() for _, v in s if v is not None), default=0.0)
        panels.append(
            _Panel(
                "error",
                f"error ratio (last {ERROR_WINDOW_S:g} s)",
                [
                    (n if n != AGGREGATED else "all requests", c, n != AGGREGATED)
                    for n, c in zip(errors, (FAIL, *EXTRA), strict=False)
                ],
                lambda v: f"{v * 100:g}%",
                emax,
            )
        )
        latencies = {k: tracks[k[0]].percentile(k[1]) for k in latency_keys if k[0] in tracks}
        lmax = max((v for s in latencies.values() for _, v in s if v is not None), default=0.0)
        panels.append(
            _Panel(
                "latency",
                "latency, ms (Locust's last 10 s)",
                [
                    (f"{'all' if n == AGGREGATED else n} p{p.rstrip('%')}", c, n != AGGREGATED)
                    for (n, p), c in zip(latencies, (LATENCY, *EXTRA), strict=False)
                ],
                lambda v: f"{v:g}",
                lmax,
            )
        )
    # y ranges: data, plus limits that do not squash the data
    off_scale: dict[str, list[str]] = {}
    for panel in panels:
        limits = [t.value for t, _, _ in thresholds if t.panel == panel.key]
        floor = {"rate": 1.0, "error": 0.01, "latency": 10.0}[panel.key]
        base = max(panel.ymax, floor)
        top = max([base, *[v for v in limits if v <= 2 * base]])
        off_scale[panel.key] = [
            t.label for t, _, _ in thresholds if t.panel == panel.key and t.value > top
        ]
        panel.ymax = top * 1.12

    # labels above the panels: faults and abort markers, in lanes
    labels: list[tuple[float, str, str, str]] = []  # x, text, colour, tooltip
    for w in run.windows:
        text = f"{w.label}: {w.detail}" if w.detail else w.label
        if w.status not in ("rolled_back", "applied", "applying"):
            text += f" ({w.status.replace('_', ' ')})"
        labels.append((x(w.start), text, FAULT_TEXT, text))
    for m in run.markers:
        labels.append((x(m.at), "\u26a0 " + m.label, ABORT, f"{m.label}: {m.detail}"))
    order = sorted(range(len(labels)), key=lambda i: labels[i][0])
    spans = []
    for i in order:
        lx, text = labels[i][0], labels[i][1]
        width = _text_width(text) + 6
        lx = min(lx, W - RIGHT - width)
        spans.append((lx, lx + width))
    lanes = _lanes(spans)
    n_lanes = max(lanes, default=-1) + 1

    band_y, band_h = 6.0, 18.0
    lane_y0 = band_y + band_h + 8
    top_y = lane_y0 + n_lanes * 16 + (4 if n_lanes else 0)
    panels_h = len(panels) * (PANEL_TITLE + PANEL_H + PANEL_GAP)
    plot_bottom = top_y + max(panels_h - PANEL_GAP, 24)  # no load: still show the windows
    height = plot_bottom + 34
    out: list[str] = [
        f'<svg class="chart" viewBox="0 0 {W:g} {height:.0f}" role="img" '
        f'aria-label="timeline of {_e(run.title)}" xmlns="http://www.w3.org/2000/svg" '
        f'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif">'
    ]
    # phase band
    for p in run.phases:
        end = p.end if p.end is not None else hi
        x1, x2 = x(p.start), x(end)
        fill = PHASE_FILL.get(p.name, "#eef0f3")
        tip = f"{p.name}: {run.rel(p.start)} to {run.rel(end)} ({end - p.start:.1f} s)"
        out.append(
            f'<rect x="{x1:.1f}" y="{band_y}" width="{max(x2 - x1, 1.0):.1f}" '
            f'height="{band_h}" fill="{fill}" stroke="#fff" stroke-width="1">'
            f"<title>{_e(tip)}</title></rect>"
        )
        label = p.name if _text_width(p.name, 10.5) + 8 < x2 - x1 else PHASE_SHORT.get(p.name, "")
        if label and _text_width(label, 10.5) + 8 < x2 - x1:
            out.append(
                _t((x1 + x2) / 2, band_y + 12.5, label, size=10.5, fill="#4b5563",
                   text_anchor="middle")
            )  # fmt: skip
    out.append(_t(LEFT - 8, band_y + 12.5, "phase", size=10.5, fill=MUTED, text_anchor="end"))

    # fault windows: shaded from the label lane down through every panel
    for w in run.windows:
        x1 = x(w.start)
        x2 = x(w.end) if w.end is not None else x(hi)
        failed = w.status in ("apply_failed", "rollback_failed") or w.end is None
        out.append(
            f'<rect class="fault-window" x="{x1:.1f}" y="{lane_y0 - 3:.1f}" '
            f'width="{max(x2 - x1, 2.0):.1f}" height="{plot_bottom - lane_y0 + 3:.1f}" '
            f'fill="{FAULT_FILL}" fill-opacity="0.16" stroke="{ABORT if failed else FAULT_EDGE}" '
            f'stroke-opacity="0.7" stroke-dasharray="{"2 2" if failed else "4 3"}" '
            f'stroke-width="1"><title>{_e(w.label)}: {_e(w.detail)} '
            f"({_e(run.rel(w.start))} to {_e(run.rel(w.end))}, {_e(w.status)})</title></rect>"
        )
    for m in run.markers:
        mx = x(m.at)
        out.append(
            f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{band_y:.1f}" y2="{plot_bottom:.1f}" '
            f'stroke="{ABORT}" stroke-width="2" stroke-dasharray="6 3">'
            f"<title>{_e(m.label)}: {_e(m.detail)}</title></line>"
        )
    for i, lane in zip(order, lanes, strict=True):
        lx, text, colour, tip = labels[i]
        lx = min(lx, W - RIGHT - _text_width(text) - 6)
        ly = lane_y0 + lane * 16 + 11
        out.append(
            f"<g><title>{_e(tip)}</title>{_t(lx + 3, ly, text, fill=colour, font_weight='600')}</g>"
        )

    # panels
    for index, panel in enumerate(panels):
        py = top_y + index * (PANEL_TITLE + PANEL_H + PANEL_GAP) + PANEL_TITLE
        y = _Scale(0.0, panel.ymax, py + PANEL_H, py)
        out.append(_t(LEFT, py - 7, panel.title, size=11.5, fill=INK, font_weight="600"))
        lx = LEFT + _text_width(panel.title, 11.5) + 18
        for label, colour, dashed in panel.legend:
            mark = (
                f'<rect x="{lx:.1f}" y="{py - 15:.1f}" width="10" height="10" fill="{colour}"/>'
                if panel.key == "rate"
                else f'<line x1="{lx:.1f}" x2="{lx + 14:.1f}" y1="{py - 10:.1f}" '
                f'y2="{py - 10:.1f}" stroke="{colour}" stroke-width="2.5"'
                + (' stroke-dasharray="4 3"/>' if dashed else "/>")
            )
            out.append(mark + _t(lx + 17, py - 6.5, label, size=10.5, fill=MUTED))
            lx += 17 + _text_width(label, 10.5) + 14
        for label in off_scale.get(panel.key, []):
            out.append(_t(lx, py - 6.5, f"({label}: above the chart)", size=10.5, fill=MUTED))
            lx += _text_width(label, 10.5) + 120
        for tick in _ticks(0.0, panel.ymax, 3):
            ty = y(tick)
            out.append(
                f'<line x1="{LEFT:g}" x2="{W - RIGHT:g}" y1="{ty:.1f}" y2="{ty:.1f}" '
                f'stroke="{GRID}" stroke-width="1"/>'
            )
            out.append(
                _t(LEFT - 6, ty + 3.5, panel.fmt(tick), size=10, fill=MUTED, text_anchor="end")
            )
        out.append(
            f'<line x1="{LEFT:g}" x2="{W - RIGHT:g}" y1="{py + PANEL_H:.1f}" '
            f'y2="{py + PANEL_H:.1f}" stroke="{AXIS}" stroke-width="1"/>'
        )
        out += _panel_body(panel.key, run, x, y, error_names, latency_keys)
        for th, _, _ in thresholds:
            if th.panel != panel.key or th.value > panel.ymax:
                continue
            ty = y(th.value)
            colour = ABORT if th.safeguard else "#374151"
            out.append(
                f'<line x1="{LEFT:g}" x2="{W - RIGHT:g}" y1="{ty:.1f}" y2="{ty:.1f}" '
                f'stroke="{colour}" stroke-width="1.2" stroke-dasharray="5 4" opacity="0.8"/>'
            )
            out.append(
                _t(
                    W - RIGHT - 4,
                    ty - 4,
                    th.label,
                    size=10,
                    fill=colour,
                    text_anchor="end",
                    paint_order="stroke",
                    stroke="#fff",
                    stroke_width="3",
                )
            )

    # time axis
    axis_y = plot_bottom + 4
    for tick in _time_ticks(lo - t0, hi - t0):
        tx = x(tick + t0)
        if tx < LEFT - 0.5 or tx > W - RIGHT + 0.5:
            continue
        out.append(
            f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{axis_y - 4:.1f}" y2="{axis_y:.1f}" '
            f'stroke="{AXIS}"/>'
        )
        out.append(_t(tx, axis_y + 12, f"{tick:g}", size=10, fill=MUTED, text_anchor="middle"))
    out.append(
        _t(
            (LEFT + W - RIGHT) / 2,
            axis_y + 27,
            f"seconds since the start ({_clock(t0)})",
            size=10.5,
            fill=MUTED,
            text_anchor="middle",
        )
    )
    out.append("</svg>")
    return Markup("\n".join(out))  # safe: every text inside went through _e


def _panel_body(
    key: str,
    run: Run,
    x: _Scale,
    y: _Scale,
    error_names: Sequence[str],
    latency_keys: Sequence[tuple[str, str]],
) -> list[str]:
    tracks = run.tracks
    out: list[str] = []
    if key == "rate":
        agg = tracks[AGGREGATED]
        for start, end, ok, bad in agg.rates():
            x1, x2 = x(start), x(end)
            width = max(x2 - x1 - 1.0, 1.0)
            base = y(0)
            tip = f"{run.rel(end)}: {ok + bad:.1f} requests/s, {bad:.1f} failed/s"
            bars = f'<rect x="{x1 + 0.5:.1f}" y="{y(ok):.1f}" width="{width:.1f}" '
            bars += f'height="{base - y(ok):.1f}" fill="{OK_BAR}"/>'
            if bad > 0:
                bars += (
                    f'<rect x="{x1 + 0.5:.1f}" y="{y(ok + bad):.1f}" width="{width:.1f}" '
                    f'height="{y(ok) - y(ok + bad):.1f}" fill="{FAIL}"/>'
                )
            out.append(f"<g><title>{_e(tip)}</title>{bars}</g>")
    elif key == "error":
        for name, colour in zip(error_names, (FAIL, *EXTRA), strict=False):
            if name not in tracks:
                continue
            series = tracks[name].error_ratio(ERROR_WINDOW_S)
            if name == AGGREGATED:
                out += _area(series, x, y, FAIL)
            out += _lines(series, x, y, colour, dashed=name != AGGREGATED)
    elif key == "latency":
        for (name, p), colour in zip(latency_keys, (LATENCY, *EXTRA), strict=False):
            if name not in tracks:
                continue
            out += _lines(tracks[name].percentile(p), x, y, colour, dashed=name != AGGREGATED)
    return out


def _lines(
    series: Sequence[tuple[float, float | None]], x: _Scale, y: _Scale, colour: str, *, dashed: bool
) -> list[str]:
    """A series as lines; other series than the aggregate are dashed, so overlaps show."""
    dash = ' stroke-dasharray="7 4"' if dashed else ""
    return [
        f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2" '
        f'stroke-linejoin="round"{dash}/>'
        for points in _polyline(series, x, y)
    ]


def _area(
    series: Sequence[tuple[float, float | None]], x: _Scale, y: _Scale, colour: str
) -> list[str]:
    out = []
    for points in _polyline(series, x, y):
        coords = points.split(" ")
        first_x, last_x = coords[0].split(",")[0], coords[-1].split(",")[0]
        base = f"{y(0):.1f}"
        out.append(
            f'<polygon points="{first_x},{base} {points} {last_x},{base}" '
            f'fill="{colour}" fill-opacity="0.12" stroke="none"/>'
        )
    return out


def sparkline_svg(run: Run, width: float = 220.0, height: float = 40.0) -> Markup:
    """A small picture of the run for the demo index: load bars, failures, fault windows.

    Markup for the template: it holds numbers and colours only, no text.
    """
    agg = run.tracks.get(AGGREGATED)
    times = [w.start for w in run.windows] + [w.end for w in run.windows if w.end is not None]
    times += [p.start for p in run.phases] + ([*agg.ts] if agg is not None else [])
    if not times:
        return Markup("")
    lo, hi = min(times), max(max(times), min(times) + 1)
    x = _Scale(lo, hi, 1, width - 1)
    out = [
        f'<svg class="spark" viewBox="0 0 {width:g} {height:g}" width="{width:g}" '
        f'height="{height:g}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for w in run.windows:
        x1, x2 = x(w.start), x(w.end if w.end is not None else hi)
        out.append(
            f'<rect class="fault-window" x="{x1:.1f}" y="0" width="{max(x2 - x1, 2):.1f}" '
            f'height="{height:g}" fill="{FAULT_FILL}" fill-opacity="0.3"/>'
        )
    if agg is not None:
        rates = agg.rates()
        top = max((ok + bad for _, _, ok, bad in rates), default=1.0) or 1.0
        y = _Scale(0, top, height - 1, 3)
        for start, end, ok, bad in rates:
            x1, bw = x(start), max(x(end) - x(start) - 0.6, 0.6)
            out.append(
                f'<rect x="{x1:.1f}" y="{y(ok):.1f}" width="{bw:.1f}" '
                f'height="{y(0) - y(ok):.1f}" fill="{OK_BAR}"/>'
            )
            if bad > 0:
                out.append(
                    f'<rect x="{x1:.1f}" y="{y(ok + bad):.1f}" width="{bw:.1f}" '
                    f'height="{y(ok) - y(ok + bad):.1f}" fill="{FAIL}"/>'
                )
    for m in run.markers:
        out.append(
            f'<line x1="{x(m.at):.1f}" x2="{x(m.at):.1f}" y1="0" y2="{height:g}" '
            f'stroke="{ABORT}" stroke-width="1.5"/>'
        )
    out.append("</svg>")
    return Markup("".join(out))  # safe: numbers and colours only


# -- what the templates show ---------------------------------------------------------------------
# Each section is handed to chaos/templates/*.html as plain data: strings and numbers already
# formatted here, escaped there (autoescape). Only the charts arrive as markup.
TEMPLATES = Path(__file__).with_name("templates")


def _environment() -> jinja2.Environment:
    """The report templates, autoescaped, failing loudly on a name the data lacks."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _head(run: Run) -> dict[str, Any]:
    label, css = verdict_badge(run.verdict, run.expect)
    expect = (
        "expected to hold" if run.expect != "deviate" else "expected to be refuted (a drawback)"
    )
    duration = (
        f" · {run.ended_at - run.started_at:.0f} s"
        if run.ended_at is not None and run.started_at is not None
        else ""
    )
    started = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started_at))
        if run.started_at
        else "start not recorded"
    )
    return {
        "title": run.title,
        "started": started,
        "duration": duration,
        "expect": expect,
        "source": _s(run.data.get("source")),
        "why": _why(run),
        "hypothesis": run.hypothesis,
        "badge": label,
        "badge_css": css,
        "as_expected": run.as_expected,
    }


def _audit_probe(run: Run) -> dict[str, Any] | None:
    for probe in run.probes:
        spec = run.specs.get(_s(probe.get("name")), {})
        in_verify = _s(probe.get("phase")).startswith("verify")
        if spec.get("type") == "audit" or (in_verify and "audit" in _s(probe.get("name"))):
            return probe
    return None


def _tiles(run: Run) -> list[dict[str, str]]:
    method = _d(run.load.get("method"))
    agg = _d(_d(run.load.get("summary")).get(AGGREGATED))
    tiles: list[tuple[str, str, str]] = []
    if run.load:
        ratio = _f(method.get("error_ratio"))
        if ratio is None:
            ratio = _f(agg.get("error_ratio"))
        req, fail = _f(method.get("requests")), _f(method.get("failures"))
        sub = "error ratio in the method"
        if req is not None and fail is not None:
            sub += f" · {int(fail)} of {int(req)} failed"
        limits = [
            t.value
            for t, request, _ in _thresholds(run)
            if t.panel == "error" and request == AGGREGATED and not t.safeguard
        ]
        css = ""
        if ratio is not None and (ratio == 0 or limits):
            css = "bad" if ratio > min(limits, default=0.0) else "good"
        tiles.append((_pct(ratio), sub, css))
        p99 = _f(method.get("p99_ms"))
        p99 = p99 if p99 is not None else _f(agg.get("p99"))
        tiles.append((_ms(p99), "worst p99 in the method (10 s window)", ""))
    audit = _audit_probe(run)
    if audit is not None:
        v = _f(audit.get("value"))
        if v is None:
            tiles.append(("n/a", "data audit (incomplete)", ""))
        else:
            text = "no violation" if v == 0 else f"{int(v)} violations"
            tiles.append((text, "data audit", "good" if v == 0 else "bad"))
    applied = sum(1 for f in run.faults if f.get("applied_at"))
    back = sum(1 for f in run.faults if f.get("status") == "rolled_back")
    if run.faults:
        tiles.append(
            (
                f"{back}/{len(run.faults)}",
                f"faults rolled back ({applied} applied)",
                "good" if back == len(run.faults) else "bad",
            )
        )
    ok = sum(1 for p in run.probes if p.get("ok") is True)
    if run.probes:
        tiles.append(
            (
                f"{ok}/{len(run.probes)}",
                "probes within tolerance",
                ("good" if ok == len(run.probes) else "bad") if run.expect != "deviate" else "",
            )
        )
    return [{"value": v, "label": k, "css": css} for v, k, css in tiles]


def _timeline(run: Run) -> dict[str, Any]:
    return {
        "svg": timeline_svg(run),
        # the chart has phases and faults only: say why, above it
        "no_load": "" if run.tracks else (run.history_note or "no load statistics"),
        "note": run.history_note if run.history_note and run.tracks else "",
    }


PHASE_TITLES = {
    "steady_state:before": "steady state, before the method",
    "steady_state:after": "steady state, after the method",
    "verify:after": "verify, after the load stopped",
}


def _probe_value(probe: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    value = probe.get("value")
    shown = _num(value)
    number = _f(value)
    if number is not None and spec.get("type") == "locust":
        metric = spec.get("metric")
        if metric == "error_ratio":
            shown += f" ({_pct(number)})"
        elif metric in ("p50", "p95", "p99"):
            shown = _ms(number)
    return shown


def _probe_kind(spec: Mapping[str, Any]) -> str:
    kind = _s(spec.get("type"))
    if kind == "locust":
        over = _s(spec.get("over"))
        span = f"last {_num(spec.get('window'))} s" if over == "window" else f"over the {over}"
        return f"Locust {_s(spec.get('metric'))} of {_s(spec.get('request'), AGGREGATED)}, {span}"
    if kind == "prometheus":
        return f"Prometheus: {_s(spec.get('query'))}"
    if kind == "http":
        return f"HTTP {_s(spec.get('method'), 'GET')} {_s(spec.get('url'))}"
    if kind == "audit":
        return "data audit across services"
    if kind == "ejection":
        return f"seconds from {_s(spec.get('fault'))} to the balancer's ejection of its instance"
    return kind


def _tolerance(text: object) -> str:
    return _s(text).replace("<=", "\u2264").replace(">=", "\u2265").replace("==", "=")


def _probes(run: Run) -> list[dict[str, Any]]:
    """The probes by phase: ``[{title, probes: [{ok, name, kind, value, tolerance, detail}]}]``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for probe in run.probes:
        name = _s(probe.get("name"), "?")
        spec = run.specs.get(name, {})
        detail = _s(probe.get("detail"))
        if len(detail) > 300:
            detail = detail[:297] + "..."
        groups.setdefault(_s(probe.get("phase"), "?"), []).append(
            {
                "ok": probe.get("ok") is True,
                "name": name,
                "kind": _probe_kind(spec),
                "value": _probe_value(probe, spec),
                "tolerance": _tolerance(probe.get("tolerance")),
                "detail": detail,
            }
        )
    return [
        {"title": PHASE_TITLES.get(phase, phase), "probes": probes}
        for phase, probes in groups.items()
    ]


def _fault_details(fault: Mapping[str, Any]) -> str:
    details = _d(fault.get("details"))
    parts = []
    recovered = _d(details.get("recovered_after_s"))
    for unit, seconds in recovered.items():
        parts.append(f"{unit} back after {_num(seconds)} s")
    pids = _d(details.get("pids"))
    if pids:
        parts.append("killed pid " + ", ".join(f"{u} {_num(p)}" for u, p in pids.items()))
    for key, value in details.items():
        if key not in ("recovered_after_s", "pids"):
            parts.append(f"{key}: {json.dumps(value, default=str)[:120]}")
    spec = _d(fault.get("spec"))
    for key, value in spec.items():
        if key not in ("name", "target", "blast_radius", "duration", "type") and value is not None:
            parts.append(f"{key} {json.dumps(value, default=str)[:60]}")
    return "; ".join(parts)


TRACE_MARGIN_S = 2.0
"""Seconds of traces shown before a fault was applied and after it was rolled back."""


def _fault_service(fault: Mapping[str, Any]) -> str | None:
    """The service whose traces a fault's link filters on: its target's, when it names one."""
    kind, _, name = _s(fault.get("target")).partition(" ")
    return name if kind == "service" and name else None


def _traces_link(run: Run, fault: Mapping[str, Any]) -> str:
    """The trace UI's search for the fault's window, or "" without a trace UI or a window."""
    base = _s(_d(run.data.get("stack")).get("trace_ui"))
    start = _f(fault.get("applied_at")) or _f(fault.get("planned_at"))
    if not base or start is None:
        return ""
    end = _f(fault.get("rolled_back_at")) or run.ended_at or start
    return lens_url(
        base,
        start=start - TRACE_MARGIN_S,
        end=max(end, start) + TRACE_MARGIN_S,
        service=_fault_service(fault),
    )


def _faults(run: Run) -> list[dict[str, str]]:
    rows = []
    for fault in run.faults:
        status = _s(fault.get("status"), "unknown")
        applied, back = _f(fault.get("applied_at")), _f(fault.get("rolled_back_at"))
        units = [_s(_d(u).get("id")) for u in _l(fault.get("units")) if _d(u).get("id")]
        rows.append(
            {
                "name": _s(fault.get("name")) or _s(fault.get("id"), "?"),
                "type": _s(fault.get("type")),
                "units": ", ".join(units) or _s(fault.get("target"), "-"),
                "target": _s(fault.get("target")),
                "blast_radius": _s(fault.get("blast_radius"), "-"),
                "applied": run.rel(applied),
                "applied_clock": _clock(applied),
                "back": run.rel(back),
                "back_clock": _clock(back),
                "held": (
                    f"{back - applied:.1f} s" if applied is not None and back is not None else "-"
                ),
                "status": status.replace("_", " "),
                "chip": "good" if status == "rolled_back" else "bad",
                "details": _fault_details(fault),
                "error": _s(fault.get("error")),
                "traces": _traces_link(run, fault),
                "traces_of": _fault_service(fault) or "every service",
            }
        )
    return rows


_CHECK = re.compile(r"([a-z_]+) (\d+)")


def _audit(run: Run) -> dict[str, Any] | None:
    probe = _audit_probe(run)
    if probe is None:
        return None
    value = _f(probe.get("value"))
    detail = _s(probe.get("detail"))
    if value is None:
        return {"state": "none", "detail": detail or "no value"}
    if value == 0:
        inner = detail[detail.find("(") + 1 : detail.rfind(")")] if "(" in detail else ""
        checks = [{"name": name.replace("_", " "), "count": n} for name, n in _CHECK.findall(inner)]
        return {"state": "good", "detail": detail, "checks": checks}
    items = [i for i in detail.split("; ") if i]
    return {"state": "bad", "violations": int(value), "plural": value != 1, "lines": items[:12]}


def _suspect_name(suspect: Mapping[str, Any]) -> str:
    for key in ("component", "name", "suspect", "target", "id", "instance", "service"):
        if suspect.get(key):
            return _s(suspect.get(key))
    return "?"


def _truth_names(truth: object) -> list[str]:
    """Where the fault really was: instances and links, else its target, as names."""
    if isinstance(truth, str):
        return [truth]
    if isinstance(truth, list):
        return [n for t in truth for n in _truth_names(t)]
    if isinstance(truth, dict):
        names = [_s(n) for key in ("instances", "links") for n in _l(truth.get(key))]
        if not names:
            names = [_suspect_name(truth)] if _suspect_name(truth) != "?" else []
        return names
    return []


def _evidence(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [e for v in value for e in _evidence(v)]
    if isinstance(value, dict):
        return [f"{k}: {_num(v) if _f(v) is not None else v}" for k, v in value.items()]
    return [] if value is None else [str(value)]


def _located_fault(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One fault's localisation: the truth, its rank and score, the ranked suspects."""
    suspects = [_d(s) for s in _l(entry.get("suspects"))]
    truth = _truth_names(entry.get("truth"))
    services = [_s(n) for n in _l(_d(entry.get("truth")).get("services"))]
    rank, score = _f(entry.get("rank")), _f(entry.get("score"))
    status = _s(entry.get("status"))
    label = _s(entry.get("located")) or (
        "undetermined" if rank is None else f"{'yes' if rank == 1 else 'no'} (#{int(rank)})"
    )
    if status == "undetermined" or label == "undetermined":
        css = "none"
    else:
        css = "good" if rank == 1 else "bad"
    name = _s(entry.get("fault_id")) or _s(entry.get("name"))
    kind = _s(entry.get("type"))
    where = ", ".join(truth) or "?"
    spans = _d(entry.get("spans"))
    facts = [f"located: {label}"]
    if rank is not None:
        facts.append(f"truth ranked #{int(rank)} of {len(suspects)}")
    if score is not None:
        facts.append(f"score {_num(score)}")
    if spans:
        facts.append(
            f"{_num(spans.get('baseline'))} baseline spans, {_num(spans.get('fault'))} in the fault"
        )
    top = max((_f(s.get("score")) or 0.0 for s in suspects), default=0.0) or 1.0
    rows = []
    for i, suspect in enumerate(suspects[:8], start=1):
        comp = _suspect_name(suspect)
        is_truth = (rank is not None and i == int(rank)) or comp in truth
        if not truth and services:
            is_truth = is_truth or _s(suspect.get("service")) in services
        value = _f(suspect.get("score"))
        rows.append(
            {
                "rank": i,
                "name": comp,
                "where": _s(suspect.get("where")),
                "is_truth": is_truth,
                "score": _num(value),
                "bar_width": f"{150 * max(value or 0.0, 0.0) / top:.1f}",
                "colour": "#1d8a4e" if is_truth else OK_BAR,
                "evidence": _evidence(suspect.get("evidence"))[:4],
            }
        )
    return {
        "css": css,
        "title": f"{name} ({kind}) on {where}" if name else f"fault on {where}",
        "facts": " · ".join(facts),
        "reason": _s(entry.get("reason")),
        "suspects": rows,
    }


LOCALIZATION_HEADINGS = {
    "blind_localization": "Where was the fault? Blind: from the run's traces alone, "
    "no injection time given",
    "localization": "Where was the fault? Window given: the journal's fault times handed over",
}


def _localization(run: Run, key: str = "localization") -> dict[str, Any] | None:
    """Where the traces say the fault was, per fault; None when the journal has no section."""
    raw = run.data.get(key)
    if raw is None:
        return None
    out: dict[str, Any] = {
        "raw": None,
        "error": None,
        "faults": [],
        "headline": None,
        "heading": LOCALIZATION_HEADINGS[key],
    }
    loc = _d(raw)
    if not loc:
        out["raw"] = json.dumps(raw, default=str)[:300]
    elif loc.get("error"):
        out["error"] = _s(loc.get("error"))
    else:
        entries = [_d(f) for f in _l(loc.get("faults"))] if "faults" in loc else [loc]
        out["faults"] = [_located_fault(e) for e in entries]
        if loc.get("headline") is not None:
            out["headline"] = _s(loc.get("headline"))
            out["score"] = None if loc.get("score") is None else _num(loc.get("score"))
    return out


def _failures(run: Run) -> dict[str, Any]:
    rows = [
        {"name": name, "count": count, "error": error[:400]}
        for name, error, count in run.failures[:8]
    ]
    return {"rows": rows, "more": len(run.failures) - 8}


LOAD_COLUMNS = ("requests", "failures", "error ratio", "p50", "p95", "p99", "req/s")


def _load_table(run: Run) -> dict[str, Any] | None:
    summary = _d(run.load.get("summary"))
    if not summary:
        return None
    names = sorted((n for n in summary if n != AGGREGATED), key=str)
    if AGGREGATED in summary:
        names.append(AGGREGATED)
    rows = []
    for name in names:
        s = _d(summary[name])
        rps = _f(s.get("rps"))
        cells = [
            _num(s.get("requests")),
            _num(s.get("failures")),
            _pct(_f(s.get("error_ratio"))),
            _ms(_f(s.get("p50"))),
            _ms(_f(s.get("p95"))),
            _ms(_f(s.get("p99"))),
            "n/a" if rps is None else f"{rps:.1f}",
        ]
        rows.append({"name": name, "total": name == AGGREGATED, "cells": cells})
    plan = _d(run.load.get("plan"))
    return {
        "plan": ", ".join(f"{k} {_num(v)}" for k, v in plan.items() if v is not None),
        "columns": LOAD_COLUMNS,
        "rows": rows,
    }


def _links(run: Run) -> list[dict[str, str]]:
    links = [{"href": "journal.json", "label": "journal.json"}]
    reports = _d(run.load.get("reports"))
    for key, label in (("html", "Locust's report"), ("history_csv", "Locust history CSV")):
        recorded = _s(reports.get(key))
        if not recorded:
            continue
        local = run.folder / Path(recorded).name
        href = (
            local.name
            if local.exists()
            else Path(recorded).as_uri()
            if recorded.startswith("/")
            else recorded
        )
        links.append({"href": href, "label": label})
    return links


def _events(run: Run) -> list[dict[str, str]]:
    items = []
    for event in (_d(e) for e in _l(run.data.get("events"))):
        text = _s(event.get("text"))
        if not text:
            rest = {k: v for k, v in event.items() if k not in ("at", "kind")}
            text = ", ".join(f"{k} {v}" for k, v in rest.items())
        if len(text) > 240:
            text = text[:237] + "..."
        items.append(
            {"at": run.rel(_f(event.get("at"))), "kind": _s(event.get("kind")), "text": text}
        )
    return items


def _canaries(run: Run) -> list[dict[str, Any]]:
    """The canaries the method judged (journal ``canaries``, see ``chaos.runner``)."""

    def pct(value: object) -> str:
        number = _f(value)
        return "n/a" if number is None else f"{number:.1%}"

    def secs(value: object) -> str:
        number = _f(value)
        return "-" if number is None else f"{number:.1f} s"

    out = []
    for c in (_d(x) for x in _l(run.data.get("canaries"))):
        rows = []
        for version, raw in _d(c.get("versions")).items():
            side = _d(raw)
            p99 = _f(side.get("p99_ms"))
            rows.append(
                {
                    "version": str(version),
                    "requests": f"{_f(side.get('requests')) or 0:.0f}",
                    "error_ratio": pct(side.get("error_ratio")),
                    "p99": "n/a" if p99 is None else f"{p99:.0f} ms",
                }
            )
        decision = _s(c.get("decision"))
        tail = (
            f"rolled back in {secs(c.get('rollback_s'))}"
            if c.get("rollback_s") is not None
            else f"rolling deploy {secs(c.get('deploy_s'))}"
        )
        out.append(
            {
                "title": f"{_s(c.get('service'))} {_s(c.get('version'))} ({_s(c.get('instance'))})",
                "decision": decision,
                "css": "m-ok" if decision == "promote" else "m-bad",
                "action": _s(c.get("action")),
                "reasons": "; ".join(_s(r) for r in _l(c.get("reasons"))),
                "rows": rows,
                "share": pct(c.get("share_observed")),
                "asked": pct(c.get("share_asked")),
                "start": secs(c.get("start_s")),
                "judged": secs(c.get("judged_s")),
                "tail": tail,
            }
        )
    return out


def _detection(run: Run) -> dict[str, Any] | None:
    """Which alert detected each fault, when, and when the alerts cleared (journal
    ``detection``, see ``chaos.detection``); None when the journal has no section."""
    raw = _d(run.data.get("detection"))
    if not raw:
        return None

    def secs(value: object) -> str:
        number = _f(value)
        return "-" if number is None else f"{number:.1f} s"

    def labels(value: object) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(_d(value).items()) if v)

    faults = []
    for f in (_d(x) for x in _l(raw.get("faults"))):
        detected = bool(f.get("detected"))
        faults.append(
            {
                "fault": _s(f.get("fault")),
                "alert": _s(f.get("alert")) if detected else "not detected",
                "labels": labels(f.get("labels")),
                "fired": run.rel(_f(f.get("fired_at"))),
                "ttd": secs(f.get("ttd_s")),
                "ttr": secs(f.get("ttr_s")) if f.get("recovered_at") else "not recovered",
                "css": "m-ok" if detected else "m-bad",
            }
        )
    alerts = [
        {
            "name": _s(a.get("name")),
            "labels": labels(a.get("labels")),
            "fired": run.rel(_f(a.get("fired_at"))),
            "resolved": run.rel(_f(a.get("resolved_at"))) if a.get("resolved_at") else "firing",
        }
        for a in (_d(x) for x in _l(raw.get("alerts")))
    ]
    return {
        "error": _s(raw.get("error")) or None,
        "headline": _s(raw.get("headline")),
        "faults": faults,
        "alerts": alerts,
    }


def report_context(run: Run) -> dict[str, Any]:
    """Everything the report template shows, as plain data (the charts as markup)."""
    return {
        "head": _head(run),
        "tiles": _tiles(run),
        "timeline": _timeline(run),
        "failures": _failures(run),
        "localization": _localization(run),
        "detection": _detection(run),
        "canaries": _canaries(run),
        "blind_localization": _localization(run, "blind_localization"),
        "audit": _audit(run),
        "probes": _probes(run),
        "faults": _faults(run),
        "trace_ui": bool(_d(run.data.get("stack")).get("trace_ui")),
        "load": _load_table(run),
        "events": _events(run),
        "links": _links(run),
    }


def render_report(run: Run, env: jinja2.Environment | None = None) -> str:
    """The report page of ``run`` (a complete HTML document)."""
    env = env or _environment()
    return env.get_template("report.html").render(report_context(run))


def write_report(journal_path: Path) -> Path:
    """Render ``report.html`` next to ``journal_path``; returns its path.

    Missing or malformed parts of the journal render as "not recorded"; only a journal that
    cannot be read as JSON (or a folder that cannot be written) raises.
    """
    run = load_run(journal_path)
    out = journal_path.with_name(REPORT_NAME)
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(render_report(run), encoding="utf-8")
    os.replace(tmp, out)
    return out


# -- the demo index --------------------------------------------------------------------------
def write_demo_index(run_dir: Path, results: Sequence[RunResult]) -> Path:
    """Write ``demo.html`` in ``run_dir``: each experiment's verdict and picture, linked.

    A report missing for a result is rendered on the way; a journal that cannot be read
    leaves its row without a picture rather than failing the index.
    """
    env = _environment()
    located = [getattr(r, "located", None) for r in results]
    rows = []
    for result, where in zip(results, located, strict=True):
        journal = Path(result.journal_path)
        report = journal.with_name(REPORT_NAME)
        run: Run | None = None
        note = ""
        try:
            run = load_run(journal)
            if not report.exists():
                report.write_text(render_report(run, env), encoding="utf-8")
        except (OSError, ValueError) as exc:
            note = f"report not available: {exc}"
        verdict = result.verdict.value
        label, css = verdict_badge(verdict, run.expect if run is not None else "hold")
        audit = result.audit or "-"
        rows.append(
            {
                "href": os.path.relpath(report, run_dir),
                "title": result.title,
                "note": note,
                "badge": label,
                "badge_css": css,
                "as_expected": bool(result.as_expected),
                "spark": sparkline_svg(run) if run is not None else "",
                "shown": (
                    result.outcome if verdict in ("passed", "failed") else (result.reason or "")
                ),
                "error_ratio": _pct(result.error_ratio),
                "p99": _ms(result.p99_ms),
                "audit": audit,
                "audit_css": "m-ok" if audit == "pass" else "m-bad" if "violation" in audit else "",
                "located": where or "n/a",
            }
        )
    total = len(results)
    expected = sum(1 for r in results if r.as_expected)
    page = env.get_template("demo.html").render(
        run_dir=str(run_dir),
        date=time.strftime("%Y-%m-%d %H:%M"),
        expected=expected,
        total=total,
        css="good" if total and expected == total else "bad",
        with_located=any(v is not None for v in located),
        rows=rows,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / DEMO_INDEX_NAME
    out.write_text(page, encoding="utf-8")
    return out


def try_write_report(journal_path: Path) -> Path | None:
    """``write_report`` for the end of a run: a report that fails is logged, never raised."""
    try:
        return write_report(journal_path)
    except Exception as exc:  # the report informs; it must never fail the experiment
        get_logger(__name__).warning(
            "report_failed", journal=str(journal_path), error=f"{type(exc).__name__}: {exc}"
        )
        return None
