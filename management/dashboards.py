"""One dashboard definition, rendered twice: Grafana's JSON (compose) and a Prometheus console
page (the embedded stack's dashboards view).

``DASHBOARD`` says what to look at — rows of panels, each with PromQL queries, a unit and how to
show it — once, in code. ``grafana_dashboard`` builds the compose stack's "Testbed overview"
with ``grafana-foundation-sdk`` (Grafana's own typed builders); ``console_page`` writes the same
panels as a Prometheus console template, which the embedded Prometheus serves at
``/consoles/testbed.html`` (``testbed up`` prints the URL).

Why console templates for the embedded view, not VictoriaMetrics' vmui: the Prometheus the
stack already runs serves them (Debian's package ships the classic UI's static files the
console graphs use), so the view adds no process, no memory, no second copy of the samples
and no second scrape of every instance on a two-core machine; its queries are the ones the
alert rules and probes see. vmui is a nicer UI, but it needs a Go build in ``make setup``, a
process (~30 MB) and either its own scrape of every target or Prometheus' remote write.

Queries are written once with two placeholders: ``$JOBS`` (a label matcher: Grafana's
``$job`` variable, every job in the console) and ``$RATE`` (the range of ``rate()``:
``$__rate_interval`` in Grafana, ``CONSOLE_RATE`` in the console). Legends use Grafana's
``{{label}}`` syntax; the console page translates them.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grafana_foundation_sdk.builders import common as gcommon_builders
from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus as gprom
from grafana_foundation_sdk.builders import statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as gcommon
from grafana_foundation_sdk.models import dashboard as gmodel

__all__ = [
    "CONSOLE_NAME",
    "CONSOLE_RATE",
    "DASHBOARD",
    "Panel",
    "Query",
    "Row",
    "console_expr",
    "console_page",
    "grafana_dashboard",
    "write_console",
]

CONSOLE_NAME = "testbed.html"
CONSOLE_RATE = "30s"
CONSOLE_RANGE_S = 300
CONSOLE_REFRESH_S = 10
NOT_PROBES = 'route!~"/healthz|/readyz|/metrics"'
FIVE_XX = NOT_PROBES + ',code=~"5.."'
CACHED = 'result=~"hit|stale|revalidated"'

Kind = Literal["timeseries", "state"]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str
    """Grafana's unit id: ``reqps``, ``percentunit``, ``s``, ``short``, ``none``."""
    kind: Kind = "timeseries"
    states: tuple[tuple[int, str, str], ...] = ()
    """(value, text, colour) for a state panel."""
    max_value: float | None = None
    width: int = 8
    may_be_empty: bool = False
    """True when an idle, healthy stack may have no series (firing alerts)."""


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _rate(metric: str, matchers: str = "") -> str:
    inner = ",".join(m for m in ("$JOBS", matchers) if m)
    return f"rate({metric}{{{inner}}}[$RATE])"


_HEALTH = ((0, "out", "red"), (1, "in", "green"))
_BREAKER = ((0, "closed", "green"), (1, "half-open", "yellow"), (2, "open", "red"))

DASHBOARD: tuple[Row, ...] = (
    Row(
        "Traffic, errors, latency (HTTP server, probes excluded)",
        (
            Panel(
                "Request rate",
                "Requests answered per second, per component (http_server_requests_total).",
                (
                    Query(
                        f"sum by (job) ({_rate('http_server_requests_total', NOT_PROBES)})",
                        "{{job}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Error ratio (5xx)",
                "Share of answers with a 5xx code, per component.",
                (
                    Query(
                        f"(sum by (job) ({_rate('http_server_requests_total', FIVE_XX)})"
                        f" or sum by (job) ({_rate('http_server_requests_total', NOT_PROBES)}) * 0)"
                        f" / sum by (job) ({_rate('http_server_requests_total', NOT_PROBES)})",
                        "{{job}}",
                    ),
                ),
                unit="percentunit",
                max_value=1,
            ),
            Panel(
                "Latency p99 per service and route",
                "From the http_server_request_duration_seconds histogram (the registry's long "
                "polls left out: they wait on purpose).",
                (
                    Query(
                        "histogram_quantile(0.99, sum by (job, route, le) ("
                        + _rate(
                            "http_server_request_duration_seconds_bucket",
                            NOT_PROBES + ',job!="registry"',
                        )
                        + "))",
                        "{{job}} {{route}}",
                    ),
                ),
                unit="s",
            ),
        ),
    ),
    Row(
        "CDN PoPs",
        (
            Panel(
                "Cache hit ratio per region",
                "Answers served from the cache (hit, stale, revalidated) among all, per PoP.",
                (
                    Query(
                        "sum by (region) "
                        f"({_rate('cdn_cache_requests_total', CACHED)})"
                        f" / sum by (region) ({_rate('cdn_cache_requests_total')})",
                        "{{region}}",
                    ),
                ),
                unit="percentunit",
                max_value=1,
                width=12,
            ),
            Panel(
                "Cache results",
                "Requests per cache result: hit, miss, stale, revalidated, pass.",
                (
                    Query(
                        f"sum by (result) ({_rate('cdn_cache_requests_total')})",
                        "{{result}}",
                    ),
                ),
                unit="reqps",
                width=12,
            ),
        ),
    ),
    Row(
        "Load balancer",
        (
            Panel(
                "Requests per upstream",
                "Requests the balancer sent to each gateway instance.",
                (
                    Query(
                        f"sum by (upstream) ({_rate('balancer_upstream_requests_total')})",
                        "{{upstream}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Upstream health",
                "1 while an instance receives new requests, 0 while it is out.",
                (Query("max by (upstream) (balancer_upstream_healthy{$JOBS})", "{{upstream}}"),),
                unit="none",
                kind="state",
                states=_HEALTH,
            ),
            Panel(
                "Upstream ejections",
                "Times an instance was taken out of rotation, by reason (0 when none was).",
                (
                    Query(
                        "sum by (upstream, reason) "
                        "(increase(balancer_upstream_ejections_total{$JOBS}[$RATE]))"
                        " or max by (upstream) (balancer_upstream_healthy{$JOBS}) * 0",
                        "{{upstream}} {{reason}}",
                    ),
                ),
                unit="short",
            ),
        ),
    ),
    Row(
        "Resilience (callers' view of their upstreams)",
        (
            Panel(
                "Retries",
                "RPC attempts beyond the first, per caller and upstream (0 when none).",
                (
                    Query(
                        f"sum by (job, upstream) ({_rate('rpc_client_retries_total')})"
                        f" or sum by (job, upstream) ({_rate('rpc_client_calls_total')}) * 0",
                        "{{job}} → {{upstream}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Circuit breakers",
                "Worst breaker state over a caller's instances: 0 closed, 1 half-open, 2 open.",
                (
                    Query(
                        "max by (job, upstream) (rpc_client_breaker_state{$JOBS})",
                        "{{job}} → {{upstream}}",
                    ),
                ),
                unit="none",
                kind="state",
                states=_BREAKER,
            ),
            Panel(
                "Outlier ejections",
                "Instances ejected by passive outlier detection, per caller and upstream.",
                (
                    Query(
                        "sum by (job, upstream) "
                        "(increase(rpc_client_ejections_total{$JOBS}[$RATE]))"
                        " or max by (job, upstream) (rpc_client_breaker_state{$JOBS}) * 0",
                        "{{job}} → {{upstream}}",
                    ),
                ),
                unit="short",
            ),
        ),
    ),
    Row(
        "Saturation",
        (
            Panel(
                "CPU per component",
                "CPU seconds per second, summed over a component's processes.",
                (
                    Query(
                        f"sum by (job) ({_rate('process_cpu_seconds_total')})",
                        "{{job}}",
                    ),
                ),
                unit="percentunit",
                width=12,
            ),
            Panel(
                "Requests in flight",
                "HTTP requests being handled right now, per component.",
                (Query("sum by (job) (http_server_requests_in_flight{$JOBS})", "{{job}}"),),
                unit="short",
                width=12,
            ),
        ),
    ),
    Row(
        "Faults and alerts",
        (
            Panel(
                "Faults active",
                "In-service faults switched on (testbed_faults_active), per instance and kind.",
                (
                    Query(
                        "max by (instance, kind) (testbed_faults_active{$JOBS})",
                        "{{instance}} {{kind}}",
                    ),
                ),
                unit="none",
                kind="state",
                states=((0, "off", "transparent"), (1, "on", "orange")),
                width=12,
            ),
            Panel(
                "Firing alerts",
                "Alerts Prometheus is firing now (its ALERTS series); empty while none fires.",
                (Query('sum by (alertname) (ALERTS{alertstate="firing"})', "{{alertname}}"),),
                unit="short",
                width=12,
                may_be_empty=True,
            ),
        ),
    ),
)


def panels(definition: Sequence[Row] = DASHBOARD) -> list[Panel]:
    return [p for row in definition for p in row.panels]


# ---- Grafana ------------------------------------------------------------------------------------
def _grafana_expr(expr: str) -> str:
    return expr.replace("$JOBS", 'job=~"$job"').replace("$RATE", "$__rate_interval")


def grafana_dashboard(
    *,
    uid: str,
    title: str,
    description: str,
    jobs: Sequence[str],
    datasource_uid: str,
    definition: Sequence[Row] = DASHBOARD,
) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (``jobs`` fill the ``job`` variable)."""
    source = gmodel.DataSourceRef(type_val="prometheus", uid=datasource_uid)
    board = (
        gdash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["testbed"])
        .readonly()
        .tooltip(gmodel.DashboardCursorSync.CROSSHAIR)
        .time("now-15m", "now")
        .refresh("5s")
        .timezone("browser")
        .with_variable(
            gdash.CustomVariable("job")
            .label("component")
            .values(",".join(jobs))
            .multi(True)
            .include_all(True)
            .current(gmodel.VariableOption(text=["All"], value=["$__all"]))
        )
    )
    next_id = 1
    for row in definition:
        board = board.with_row(gdash.Row(row.title).id(next_id))
        next_id += 1
        for panel in row.panels:
            board = board.with_panel(_grafana_panel(panel, source).id(next_id))
            next_id += 1
    encoded = json.loads(JSONEncoder(sort_keys=False).encode(board.build()))
    if not isinstance(encoded, dict):
        raise TypeError("grafana-foundation-sdk did not encode a dashboard object")
    return encoded


def _grafana_panel(
    panel: Panel, source: gmodel.DataSourceRef
) -> timeseries.Panel | statetimeline.Panel:
    built: timeseries.Panel | statetimeline.Panel
    if panel.kind == "state":
        built = statetimeline.Panel().mappings(
            [
                gmodel.ValueMap(
                    options={
                        str(value): gmodel.ValueMappingResult(text=text, color=colour, index=i)
                        for i, (value, text, colour) in enumerate(panel.states)
                    }
                )
            ]
        )
    else:
        built = timeseries.Panel().legend(
            gcommon_builders.VizLegendOptions()
            .display_mode(gcommon.LegendDisplayMode.LIST)
            .placement(gcommon.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    built = (
        built.title(panel.title)
        .description(panel.description)
        .datasource(source)
        .unit(panel.unit)
        .span(panel.width)
        .height(8)
    )
    if panel.max_value is not None:
        built = built.min(0).max(panel.max_value)
    for i, query in enumerate(panel.queries):
        built = built.with_target(
            gprom.Dataquery()
            .ref_id(chr(ord("A") + i))
            .datasource(source)
            .expr(_grafana_expr(query.expr))
            .legend_format(query.legend)
        )
    return built


# ---- the embedded view: a Prometheus console template --------------------------------------------
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_CONSOLE_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="/classic/static/bootstrap4/css/bootstrap.min.css">
<link rel="stylesheet" href="/classic/static/rickshaw/rickshaw.min.css">
<link rel="stylesheet" href="/classic/static/css/prom_console.css">
<script src="/classic/static/d3/d3.min.js"></script>
<script src="/classic/static/rickshaw/rickshaw.min.js"></script>
<script src="/classic/static/jquery/jquery.min.js"></script>
<script>var PATH_PREFIX = "";</script>
<script src="/classic/static/js/prom_console.js"></script>
<style>
body {{ font: 14px system-ui, sans-serif; background: #f7f8fa; color: #1f2430; }}
main {{ max-width: 1500px; margin: 0 auto; padding: 12px 20px 30px; }}
h1 {{ font-size: 22px; margin: 4px 0; }} h2 {{ font-size: 16px; margin: 22px 0 8px; }}
.panels {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.panel {{ background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 8px 10px;
  flex: 1 1 420px; min-width: 0; }}
.panel h3 {{ font-size: 14px; margin: 0 0 2px; }}
.panel .desc {{ color: #6b7280; font-size: 12px; }}
.graph {{ min-height: 160px; }}
table.now {{ font-size: 12px; width: 100%; margin-top: 4px; }}
table.now td {{ padding: 1px 6px; border-top: 1px solid #f0f1f3; }}
table.now td.v {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
.empty {{ color: #6b7280; font-style: italic; }}
</style>
</head>
<body>
<main>
"""

_JS_FORMAT = {
    "percentunit": "function (y) { return (y * 100).toFixed(y < 0.1 ? 1 : 0) + '%'; }",
    "s": "function (y) { return y < 1 ? (y * 1000).toFixed(0) + ' ms' : y.toFixed(2) + ' s'; }",
}
_GO_FORMAT = {
    "percentunit": "humanizePercentage",
    "s": "humanizeDuration",
    "reqps": 'printf "%.2f/s"',
}


def console_expr(expr: str) -> str:
    """A definition's query as the console runs it: every job, a fixed rate window."""
    return expr.replace("$JOBS", 'job=~".+"').replace("$RATE", CONSOLE_RATE)


def _go_legend(legend: str) -> str:
    """Grafana's ``{{job}} {{route}}`` as Go template text over a sample's labels."""
    parts = _LEGEND_LABEL.split(legend)
    out = []
    for i, part in enumerate(parts):
        out.append(f"{{{{ .Labels.{part} }}}}" if i % 2 else html.escape(part))
    return "".join(out).strip() or "value"


def _js_legend(legend: str) -> str:
    return _LEGEND_LABEL.sub(r"[[\1]]", legend)


def _console_panel(panel: Panel, index: int) -> str:
    node = f"panel-{index}"
    exprs = [console_expr(q.expr) for q in panel.queries]
    for expr in exprs:
        if "{{" in expr or "`" in expr:
            raise ValueError(f"panel {panel.title!r}: {expr!r} cannot go in a console template")
    graph: dict[str, Any] = {
        "expr": exprs,
        "name": [_js_legend(q.legend) for q in panel.queries],
        "renderer": "line",
        "min": 0,
    }
    if panel.max_value is not None:
        graph["max"] = panel.max_value
    formatter = _JS_FORMAT.get(panel.unit, "PromConsole.NumberFormatter.humanizeNoSmallPrefix")
    states = ", ".join(f"{v} {text}" for v, text, _ in panel.states)
    rows = []
    go_format = _GO_FORMAT.get(panel.unit, "humanize")
    for query, expr in zip(panel.queries, exprs, strict=True):
        rows.append(
            f"{{{{ range query `{expr}` }}}}<tr><td>{_go_legend(query.legend)}</td>"
            f'<td class="v">{{{{ .Value | {go_format} }}}}</td></tr>'
            f'{{{{ else }}}}<tr><td class="empty" colspan="2">no series now</td></tr>{{{{ end }}}}'
        )
    options = json.dumps(graph, ensure_ascii=False)[:-1]
    return (
        f'<section class="panel" data-title="{html.escape(panel.title)}" data-kind="{panel.kind}">'
        f"<h3>{html.escape(panel.title)}</h3>"
        f'<div class="desc">{html.escape(panel.description)}'
        + (f" ({html.escape(states)})" if states else "")
        + f'</div><div class="graph" id="{node}"></div>'
        f'<table class="now"><tbody>{"".join(rows)}</tbody></table>'
        f"<script>new PromConsole.Graph({options}, "
        f'"node": document.getElementById("{node}"), '
        f'"yAxisFormatter": {formatter}, "yHoverFormatter": {formatter}}});</script>'
        "</section>"
    )


def console_page(*, title: str, subtitle: str, definition: Sequence[Row] = DASHBOARD) -> str:
    """The dashboard as a Prometheus console template (Go template text, HTML out): each
    panel a graph over the last ``CONSOLE_RANGE_S`` seconds, redrawn every
    ``CONSOLE_REFRESH_S``, and a table of its series when the page was served."""
    out = [_CONSOLE_HEAD.format(title=html.escape(title))]
    # The graphs' range: CONSOLE_RANGE_S, or what the URL's fragment asks for, as Prometheus'
    # console time control writes it (#pctc{"duration":<seconds>,"endTime":0}).
    out.append(
        "<script>if (window.location.hash.indexOf('#pctc') !== 0) {"
        f" PromConsole.graphDefaults.duration = {CONSOLE_RANGE_S}; }}</script>"
    )
    out.append(f'<h1>{html.escape(title)}</h1><div class="desc">{html.escape(subtitle)}</div>')
    index = 0
    for row in definition:
        out.append(f'<h2>{html.escape(row.title)}</h2><div class="panels">')
        for panel in row.panels:
            index += 1
            out.append(_console_panel(panel, index))
        out.append("</div>")
    out.append(
        # A graph still waiting for its queries is left to finish (dispatch would abort them).
        "<script>window.setInterval(function () {"
        " PromConsole._graph_registry.forEach(function (g) {"
        " if (g._xhrs.every(function (x) { return x.readyState === 4; })) {"
        " g.params.endTime = Date.now() / 1000; g.dispatch(); }"
        " }); }, "
        f"{CONSOLE_REFRESH_S * 1000});</script>"
    )
    out.append("</main>\n</body>\n</html>\n")
    return "\n".join(out)


def write_console(folder: Path, *, topology_name: str) -> tuple[Path, Path]:
    """Write the console page into ``folder/consoles`` (and an empty ``console_libraries``);
    returns both folders, for Prometheus' ``--web.console.templates`` and ``.libraries``."""
    consoles, libraries = folder / "consoles", folder / "console_libraries"
    consoles.mkdir(parents=True, exist_ok=True)
    libraries.mkdir(parents=True, exist_ok=True)
    page = console_page(
        title="Testbed dashboards",
        subtitle=f"topology {topology_name} · every component · rates over {CONSOLE_RATE} · "
        "generated by testbed up from management/dashboards.py (the Grafana dashboard's "
        "definition too)",
    )
    (consoles / CONSOLE_NAME).write_text(page, encoding="utf-8")
    return consoles, libraries
