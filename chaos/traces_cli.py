"""``testbed traces``: the service map, hop counts and where the time goes, from a run's spans.

Reads ``<run_dir>/traces/*.jsonl`` (the span files every process writes when no OTLP endpoint
is set), prints the service map (each edge with calls, errors, p50, p99 and the median time on
the wire), the hop-count distribution per entry route and the components with the most self
time, and writes the map as ``<run_dir>/service-map.svg``.

The SVG is written by hand (nodes in columns by depth from the entry services, edges with
their call counts): the picture is simple and a graph-drawing dependency would outweigh it.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import click
from rich.console import Console
from rich.table import Table

from observability.analysis import (
    ServiceMap,
    Trace,
    assemble,
    hop_distribution,
    self_times,
    service_map,
)
from observability.spans import SpanFileStats, load_spans

__all__ = ["SVG_NAME", "render_svg", "traces", "traces_report"]

SVG_NAME = "service-map.svg"
NODE_W, NODE_H = 160, 44
COL_GAP, ROW_GAP, MARGIN = 110, 26, 30


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


# -- the picture -----------------------------------------------------------------------------


def render_svg(smap: ServiceMap, *, title: str = "service map") -> str:
    """The service map as a standalone SVG document."""
    columns: dict[int, list[str]] = defaultdict(list)
    for service in sorted(smap.services):
        columns[smap.depth.get(service, 0)].append(service)
    depths = sorted(columns)
    pos: dict[str, tuple[float, float]] = {}
    tallest = max((len(c) for c in columns.values()), default=1)
    height = 2 * MARGIN + 30 + tallest * (NODE_H + ROW_GAP)
    for ci, depth in enumerate(depths):
        col = columns[depth]
        top = MARGIN + 30 + (tallest - len(col)) * (NODE_H + ROW_GAP) / 2
        for ri, service in enumerate(col):
            pos[service] = (MARGIN + ci * (NODE_W + COL_GAP), top + ri * (NODE_H + ROW_GAP))
    width = 2 * MARGIN + max(1, len(depths)) * (NODE_W + COL_GAP) - COL_GAP
    most = max((e.calls for e in smap.edges), default=1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="12">',
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='9' "
        "markerHeight='9' markerUnits='userSpaceOnUse' orient='auto-start-reverse'>"
        "<path d='M0,0 L10,5 L0,10 z' "
        "fill='#555'/></marker></defs>",
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="{MARGIN}" y="{MARGIN}" font-size="15" font-weight="bold">'
        f"{escape(title)}</text>",
    ]
    for e in smap.edges:
        if e.caller not in pos or e.callee not in pos:
            continue
        (x1, y1), (x2, y2) = pos[e.caller], pos[e.callee]
        stroke = "#c0392b" if e.error_ratio > 0.01 else "#555"
        w = 1.0 + 3.0 * math.log1p(e.calls) / math.log1p(most)
        if x2 > x1:  # forward: right side of the caller to the left side of the callee
            sx, sy, ex, ey = x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2
            path = (
                f"M{sx:.0f},{sy:.0f} C{sx + 50:.0f},{sy:.0f} "
                f"{ex - 50:.0f},{ey:.0f} {ex:.0f},{ey:.0f}"
            )
            lx, ly = (sx + ex) / 2, (sy + ey) / 2 - 4
        else:  # same column or backwards: an arc under the boxes
            sx, sy, ex, ey = x1 + NODE_W / 2, y1 + NODE_H, x2 + NODE_W / 2, y2 + NODE_H
            dip = max(sy, ey) + 40
            path = f"M{sx:.0f},{sy:.0f} C{sx:.0f},{dip:.0f} {ex:.0f},{dip:.0f} {ex:.0f},{ey:.0f}"
            lx, ly = (sx + ex) / 2, dip - 6
        label = f"{e.calls}" + (f" ({e.errors} err)" if e.errors else "")
        out.append(
            f'<path d="{path}" fill="none" stroke="{stroke}" stroke-width="{w:.1f}" '
            f'marker-end="url(#arrow)"><title>{escape(e.caller)} -&gt; {escape(e.callee)}: '
            f"{e.calls} calls, {e.errors} errors, p50 {_ms(e.p50_ms)}, p99 {_ms(e.p99_ms)}"
            f"</title></path>"
            f'<text x="{lx:.0f}" y="{ly:.0f}" text-anchor="middle" fill="{stroke}">'
            f"{escape(label)}</text>"
        )
    for service, (x, y) in pos.items():
        out.append(
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="6" '
            f'fill="#eaf2fb" stroke="#2c3e50"/>'
            f'<text x="{x + NODE_W / 2:.0f}" y="{y + 18:.0f}" text-anchor="middle" '
            f'font-weight="bold">{escape(service)}</text>'
            f'<text x="{x + NODE_W / 2:.0f}" y="{y + 34:.0f}" text-anchor="middle" '
            f'fill="#555">{smap.services[service]} server spans</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- the report ------------------------------------------------------------------------------


MANAGEMENT_SERVICES = frozenset({"registry"})
"""The management plane's own traffic (heartbeats, watches): not part of the system's map."""


def traces_report(
    run_dir: Path, *, since: float | None = None, management: bool = False
) -> dict[str, Any]:
    """Everything ``testbed traces`` shows, as JSON-ready data; writes the SVG (blocking)."""
    stats = SpanFileStats()
    spans = load_spans(run_dir, stats)
    if not management:
        spans = [s for s in spans if s.service not in MANAGEMENT_SERVICES]
    if since is not None:
        cutoff = (time.time() - since) * 1e9
        spans = [s for s in spans if s.start_ns >= cutoff]
    traces: list[Trace] = assemble(spans)
    smap = service_map(traces)
    hops = hop_distribution(traces)
    svg_path = run_dir / SVG_NAME
    svg_path.write_text(render_svg(smap, title=f"service map - {run_dir.name}"), "utf-8")
    return {
        "run_dir": str(run_dir),
        "span_files": stats.files,
        "bad_lines": stats.bad_lines,
        "spans": len(spans),
        "traces": len(traces),
        "service_map": smap.to_json(),
        "hops": {
            route: {
                "traces": sum(c.values()),
                "mean": round(sum(h * n for h, n in c.items()) / sum(c.values()), 2),
                "distribution": {str(h): n for h, n in sorted(c.items())},
            }
            for route, c in sorted(hops.items(), key=lambda kv: -sum(kv[1].values()))
        },
        "self_time": [
            {
                "component": s.component,
                "spans": s.spans,
                "total_s": round(s.total_s, 3),
                "p50_ms": s.p50_ms,
                "p99_ms": s.p99_ms,
            }
            for s in self_times(traces)
        ],
        "svg": str(svg_path),
    }


def _print(console: Console, report: dict[str, Any], top: int) -> None:
    smap = report["service_map"]
    table = Table("edge", "calls", "errors", "p50", "p99", "wire p50", title="service map")
    for e in smap["edges"]:
        table.add_row(
            f"{e['caller']} -> {e['callee']}",
            str(e["calls"]),
            str(e["errors"]),
            _ms(e["p50_ms"]),
            _ms(e["p99_ms"]),
            _ms(e["wire_p50_ms"]),
        )
    console.print(table)
    hops = Table("entry route", "traces", "mean hops", "hops: traces", title="hop count")
    for route, h in report["hops"].items():
        spread = ", ".join(f"{k}: {v}" for k, v in h["distribution"].items())
        hops.add_row(route, str(h["traces"]), f"{h['mean']:.2f}", spread)
    console.print(hops)
    where = Table("component", "spans", "self time total", "p50", "p99", title="self time")
    for s in report["self_time"][:top]:
        where.add_row(
            s["component"],
            str(s["spans"]),
            f"{s['total_s']:.2f} s",
            _ms(s["p50_ms"]),
            _ms(s["p99_ms"]),
        )
    console.print(where)
    console.print(
        f"{report['spans']} spans in {report['traces']} traces from {report['span_files']} "
        f"files ({report['bad_lines']} unreadable lines)"
    )
    console.print(f"service map picture: {report['svg']}")


@click.command("traces")
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="The run folder (default: the current run).",
)
@click.option(
    "--since",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Only spans that started in the last SECONDS.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--top", type=click.IntRange(min=1), default=10, help="Self-time rows to show.")
@click.option(
    "--management", is_flag=True, help="Include the registry's own traffic (heartbeats, watches)."
)
def traces(
    run_dir: Path | None, since: float | None, as_json: bool, top: int, management: bool
) -> None:
    """The service map, hop counts per entry route and self time, from the run's traces."""
    from management.stack import current_run_dir

    run = run_dir.resolve() if run_dir else current_run_dir()
    if run is None:
        raise click.UsageError("no stack is up; give --run-dir")
    if not any((run / "traces").glob("*.jsonl")):
        raise click.ClickException(
            f"no span files in {run / 'traces'} (spans go to Jaeger when OTLP is configured)"
        )
    report = traces_report(run, since=since, management=management)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    console = Console(highlight=False)
    _print(console if console.is_terminal else Console(highlight=False, width=160), report, top)
    if not report["spans"]:
        console.print("no spans in that time range")
