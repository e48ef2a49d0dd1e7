"""Prometheus recording rules and alerts, generated from the topology.

What a team would write for this system, one rule group per component and per link:

- **SLOs per service, per public route and per link**, alerted on their error-budget burn rate
  with the SRE workbook's *multi-window, multi-burn-rate* alerts (chapter 5, "Alerting on
  SLOs", its sixth iteration): an alert fires when the budget burns fast over a long window
  *and* is still burning over a short one (the short window makes it resolve quickly once the
  burning stops). Two SLIs: the error ratio (5xx answers; for an RPC link, calls that ended in
  a server-side code) and the latency ratio (answers slower than a threshold, read from a
  histogram bucket, so the threshold is a bucket bound).
- **Instances**: down (the scrape fails: killed, frozen, unreachable; held while a third of
  all targets fail at once, which says the host is overloaded), not ready (``/readyz``
  fails, from the ``process_ready`` gauge), restarted (``process_start_time_seconds`` changed).
- **Saturation**: requests in flight, CPU, a link's circuit breaker open, its bulkhead refusing
  calls, an upstream instance ejected by outlier detection.

**Windows, scaled to the testbed.** The workbook's page tiers for a 30-day SLO are 1 h / 5 min at
a burn rate of 14.4 (2% of the budget in an hour) and 6 h / 30 min at 6 (5% in six hours).
An experiment here lasts 30-90 s and a fault 5-20 s, so the whole time scale is divided by
300 (the SLO period becomes 2.4 h): 1 h -> 12 s and 6 h -> 72 s. The short windows would be
1 s and 6 s, but a ``rate()`` needs two samples and the scrape interval is 1 s, so the first
short window is 3 s (three scrapes; the workbook's long/short ratio is 12, here 4). The ticket
tier (3 days / 6 h at 1x) would be 14 min / 72 s, longer than any run: it is left out. With a
1 s scrape and a 1 s evaluation interval, a fault that fails or slows every request is seen by
the 12 s / 3 s tier about 2-3 s after it starts (one scrape, one evaluation, and the long
window's ratio crossing 14.4 times the budget).

Rule names follow Prometheus' ``level:metric:operations`` convention. Every alert carries
``service`` (the component it is about; for a link, the callee), ``severity`` and, where it
applies, ``instance``, ``caller``, ``link`` and ``route``: ``chaos.alerts`` reads them back.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import Histogram

from management.topology import Topology
from mesh.errors import ConfigError
from observability.metrics import DURATION_BUCKETS

__all__ = [
    "AlertPolicy",
    "BurnTier",
    "alert_rules",
    "check_rules",
    "run_rule_tests",
    "write_rules",
]

SERVER_BUCKETS = DURATION_BUCKETS
"""``http_server_request_duration_seconds``' bounds."""
CLIENT_BUCKETS = tuple(b for b in Histogram.DEFAULT_BUCKETS if b != float("inf"))
"""``rpc_client_duration_seconds``' bounds (``mesh.client`` keeps prometheus-client's default)."""
NOT_SLO_ROUTES = "/healthz|/readyz|/metrics"
"""Routes no user calls (probes and scrapes): outside every SLO."""
SERVER_ERROR_CODES = "unknown|deadline_exceeded|resource_exhausted|internal|unavailable|data_loss"
"""RPC codes that count against a link's availability (the callee's fault, not the caller's)."""
PUBLIC_KINDS = ("gateway",)
"""Components whose routes are the public API (``/api/...``): each route gets its own SLO."""
EDGE_KINDS = ("gateway", "balancer", "cdn")


@dataclass(frozen=True)
class BurnTier:
    """One multi-window burn-rate alert: fires when both windows burn faster than ``burn``."""

    long_s: int
    short_s: int
    burn: float
    severity: str = "page"


@dataclass(frozen=True, kw_only=True)
class AlertPolicy:
    """The objectives and thresholds the rules encode (defaults: see the module docstring)."""

    availability: float = 0.99
    """Share of requests that must not fail (a 1% error budget)."""
    latency_objective: float = 0.99
    """Share of requests that must be faster than the latency threshold."""
    service_latency_s: float = 0.5
    edge_latency_s: float = 1.0
    """Gateways, balancers and CDN PoPs: their answers include every hop below them."""
    link_latency_s: float = 0.5
    """A link's threshold when it has no ``per_try_timeout_ms`` (that timeout otherwise)."""
    tiers: tuple[BurnTier, ...] = (BurnTier(12, 3, 14.4), BurnTier(72, 6, 6.0))
    in_flight_saturated: int = 50
    cpu_saturated: float = 0.85
    """CPU seconds per second of one process (it has one event loop: ~1 is all it can use)."""

    def windows(self) -> list[int]:
        return sorted({w for t in self.tiers for w in (t.long_s, t.short_s)})


def _le(seconds: float, buckets: tuple[float, ...], what: str) -> str:
    """The bucket bound at or above ``seconds`` as the ``le`` label reads (``0.5``, ``1.0``)."""
    for bound in buckets:
        if bound >= seconds - 1e-9:
            return repr(float(bound))
    raise ConfigError(f"{what}: a latency threshold of {seconds} s is above every bucket")


def _ratio(bad: str, total: str) -> str:
    return f"({bad}) / ({total})"


def _or_zero(bad: str, total: str) -> str:
    """``bad``, or 0 where ``total`` has traffic but no error series exists yet (a ratio of 0,
    not an absent one, until the first error)."""
    return f"{bad} or {total} * 0"


def _burn_alerts(
    name: str, record: str, selector: str, labels: dict[str, str], budget: float, what: str,
    policy: AlertPolicy,
) -> list[dict[str, Any]]:  # fmt: skip
    alerts = []
    for tier in policy.tiers:
        threshold = round(tier.burn * budget, 6)
        expr = (
            f"{record}{tier.long_s}s{selector} > {threshold}"
            f" and {record}{tier.short_s}s{selector} > {threshold}"
        )
        alerts.append(
            {
                "alert": name,
                "expr": expr,
                "labels": {
                    **labels,
                    "severity": tier.severity,
                    "window": f"{tier.long_s}s/{tier.short_s}s",
                },
                "annotations": {
                    "summary": f"{what}: error budget burning {tier.burn:g}x too fast",
                    "description": (
                        f"{{{{ $value | humanizePercentage }}}} over {tier.long_s}s "
                        f"(budget {budget:.2%}, burn {tier.burn:g}x over {tier.long_s}s and "
                        f"{tier.short_s}s)"
                    ),
                },
            }
        )
    return alerts


def _component_group(name: str, kind: str, policy: AlertPolicy) -> dict[str, Any]:
    job = f'job="{name}"'
    req = f'http_server_requests_total{{{job},route!~"{NOT_SLO_ROUTES}"}}'
    latency_s = policy.edge_latency_s if kind in EDGE_KINDS else policy.service_latency_s
    le = _le(latency_s, SERVER_BUCKETS, f"component {name}")
    hist = "http_server_request_duration_seconds"
    hsel = f'{job},route!~"{NOT_SLO_ROUTES}"'
    rules: list[dict[str, Any]] = []
    routes = kind in PUBLIC_KINDS
    rsel = f'{job},route=~"/api/.*"'
    for w in policy.windows():
        errors = req.replace("}", ',code=~"5.."}', 1)
        total = f"sum by (job) (rate({req}[{w}s]))"
        rules.append(
            {
                "record": f"job:slo_errors_per_request:ratio_rate{w}s",
                "expr": _ratio(_or_zero(f"sum by (job) (rate({errors}[{w}s]))", total), total),
                "labels": {"service": name},
            }
        )
        rules.append(
            {
                "record": f"job:slo_slow_per_request:ratio_rate{w}s",
                "expr": "1 - "
                + _ratio(
                    f'sum by (job) (rate({hist}_bucket{{{hsel},le="{le}"}}[{w}s]))',
                    f"sum by (job) (rate({hist}_count{{{hsel}}}[{w}s]))",
                ),
                "labels": {"service": name},
            }
        )
        if routes:
            rreq = f"http_server_requests_total{{{rsel}}}"
            rerr = f'http_server_requests_total{{{rsel},code=~"5.."}}'
            rtotal = f"sum by (job, route) (rate({rreq}[{w}s]))"
            rules.append(
                {
                    "record": f"job_route:slo_errors_per_request:ratio_rate{w}s",
                    "expr": _ratio(
                        _or_zero(f"sum by (job, route) (rate({rerr}[{w}s]))", rtotal), rtotal
                    ),
                    "labels": {"service": name},
                }
            )
            rules.append(
                {
                    "record": f"job_route:slo_slow_per_request:ratio_rate{w}s",
                    "expr": "1 - "
                    + _ratio(
                        f'sum by (job, route) (rate({hist}_bucket{{{rsel},le="{le}"}}[{w}s]))',
                        f"sum by (job, route) (rate({hist}_count{{{rsel}}}[{w}s]))",
                    ),
                    "labels": {"service": name},
                }
            )
    sel = f"{{{job}}}"
    err_budget = round(1 - policy.availability, 6)
    lat_budget = round(1 - policy.latency_objective, 6)
    labels = {"service": name}
    alerts = [
        *_burn_alerts(
            "ServiceErrorBudgetBurn", "job:slo_errors_per_request:ratio_rate", sel, labels,
            err_budget, f"{name}: 5xx answers", policy,
        ),
        *_burn_alerts(
            "ServiceLatencyBudgetBurn", "job:slo_slow_per_request:ratio_rate", sel, labels,
            lat_budget, f"{name}: answers slower than {le} s", policy,
        ),
    ]  # fmt: skip
    if routes:
        alerts += [
            *_burn_alerts(
                "RouteErrorBudgetBurn", "job_route:slo_errors_per_request:ratio_rate", sel,
                labels, err_budget, f"{name} {{{{ $labels.route }}}}: 5xx answers", policy,
            ),
            *_burn_alerts(
                "RouteLatencyBudgetBurn", "job_route:slo_slow_per_request:ratio_rate", sel,
                labels, lat_budget, f"{name} {{{{ $labels.route }}}}: slower than {le} s",
                policy,
            ),
        ]  # fmt: skip
    alerts += [
        {
            "alert": "InstanceDown",
            "expr": f"up{sel} == 0 unless on () {_SCRAPES_FAILING}",
            "labels": {**labels, "severity": "page"},
            "annotations": {
                "summary": f"{name}: {{{{ $labels.instance }}}} does not answer its scrape",
                "description": "killed, frozen or unreachable",
            },
        },
        {
            "alert": "InstanceNotReady",
            "expr": f"process_ready{sel} == 0",
            "labels": {**labels, "severity": "page"},
            "annotations": {
                "summary": f"{name}: {{{{ $labels.instance }}}} fails /readyz",
                "description": "starting or draining: it takes no traffic",
            },
        },
        {
            "alert": "InstanceRestarted",
            "expr": f"changes(process_start_time_seconds{sel}[{policy.tiers[0].long_s}s]) > 0",
            "labels": {**labels, "severity": "ticket"},
            "annotations": {
                "summary": f"{name}: {{{{ $labels.instance }}}} restarted",
                "description": "its process start time changed: crashed or killed, then back",
            },
        },
        {
            "alert": "InstanceSaturated",
            "expr": f"http_server_requests_in_flight{sel} >= {policy.in_flight_saturated}",
            "for": "2s",
            "labels": {**labels, "severity": "ticket"},
            "annotations": {
                "summary": f"{name}: {{{{ $labels.instance }}}} has {{{{ $value }}}} "
                "requests in flight",
                "description": f"at least {policy.in_flight_saturated} for 2 s",
            },
        },
        {
            "alert": "InstanceCpuSaturated",
            "expr": f"rate(process_cpu_seconds_total{sel}[6s]) > {policy.cpu_saturated}",
            "for": "2s",
            "labels": {**labels, "severity": "ticket"},
            "annotations": {
                "summary": f"{name}: {{{{ $labels.instance }}}} uses "
                "{{ $value | humanize }} CPU seconds per second",
                "description": f"above {policy.cpu_saturated} for 2 s (one event loop)",
            },
        },
    ]
    return {"name": f"testbed-{name}", "rules": rules + alerts}


def _link_group(
    source: str, target: str, per_try_ms: int | None, policy: AlertPolicy
) -> dict[str, Any]:
    sel = f'job="{source}",upstream="{target}"'
    latency_s = per_try_ms / 1000 if per_try_ms is not None else policy.link_latency_s
    le = _le(latency_s, CLIENT_BUCKETS, f"link {source} -> {target}")
    labels = {"service": target, "caller": source, "link": f"{source}->{target}"}
    rules: list[dict[str, Any]] = []
    calls = f"rpc_client_calls_total{{{sel}}}"
    hist = "rpc_client_duration_seconds"
    for w in policy.windows():
        total = f"sum by (job, upstream) (rate({calls}[{w}s]))"
        failed = (
            f'sum by (job, upstream) (rate(rpc_client_calls_total{{{sel},code=~"'
            f'{SERVER_ERROR_CODES}"}}[{w}s]))'
        )
        rules.append(
            {
                "record": f"job_upstream:rpc_errors_per_call:ratio_rate{w}s",
                "expr": _ratio(_or_zero(failed, total), total),
                "labels": labels,
            }
        )
        rules.append(
            {
                "record": f"job_upstream:rpc_slow_per_call:ratio_rate{w}s",
                "expr": "1 - "
                + _ratio(
                    f'sum by (job, upstream) (rate({hist}_bucket{{{sel},le="{le}"}}[{w}s]))',
                    f"sum by (job, upstream) (rate({hist}_count{{{sel}}}[{w}s]))",
                ),
                "labels": labels,
            }
        )
    rsel = f"{{{sel}}}"
    link = f"{source} -> {target}"
    alerts = [
        *_burn_alerts(
            "LinkErrorBudgetBurn", "job_upstream:rpc_errors_per_call:ratio_rate", rsel, labels,
            round(1 - policy.availability, 6), f"{link}: failed calls", policy,
        ),
        *_burn_alerts(
            "LinkLatencyBudgetBurn", "job_upstream:rpc_slow_per_call:ratio_rate", rsel, labels,
            round(1 - policy.latency_objective, 6), f"{link}: calls slower than {le} s", policy,
        ),
        {
            "alert": "LinkBreakerOpen",
            "expr": f"max by (job, upstream) (rpc_client_breaker_state{rsel}) == 2",
            "labels": {**labels, "severity": "ticket"},
            "annotations": {"summary": f"{link}: a circuit breaker is open",
                            "description": "calls fail fast without reaching the callee"},
        },
        {
            "alert": "LinkBulkheadFull",
            "expr": f'sum by (job, upstream) (rate(rpc_client_calls_total{{{sel},'
            f'code="resource_exhausted"}}[{policy.tiers[0].short_s}s])) > 0',
            "labels": {**labels, "severity": "ticket"},
            "annotations": {"summary": f"{link}: calls refused (bulkhead full or callee busy)",
                            "description": "resource_exhausted answers"},
        },
        {
            "alert": "LinkInstanceEjected",
            "expr": f"sum by (job, upstream) (increase(rpc_client_ejections_total{rsel}"
            f"[{policy.tiers[0].long_s}s])) > 0",
            "labels": {**labels, "severity": "ticket"},
            "annotations": {"summary": f"{link}: an instance of {target} was ejected",
                            "description": "passive outlier detection took it out of rotation"},
        },
    ]  # fmt: skip
    return {"name": f"testbed-link-{source}-{target}", "rules": rules + alerts}


_SCRAPES_FAILING = '(count(up{job!="prometheus"} == 0) > 0.3 * count(up{job!="prometheus"}))'
"""A third of every target failing its scrape at once: the machine (or Prometheus) is the
problem, not each instance. ``InstanceDown`` stays quiet then and this fires instead."""


def _monitoring_group() -> dict[str, Any]:
    return {
        "name": "testbed-monitoring",
        "rules": [
            {
                "alert": "ScrapesFailingEverywhere",
                "expr": _SCRAPES_FAILING,
                "labels": {"service": "prometheus", "severity": "page"},
                "annotations": {
                    "summary": "{{ $value }} targets fail their scrape at once",
                    "description": "the host or Prometheus is overloaded: InstanceDown is held",
                },
            }
        ],
    }


def alert_rules(topology: Topology, policy: AlertPolicy | None = None) -> dict[str, Any]:
    """The rules file's data: one group per component, one per RPC link (caller -> callee),
    and one watching the monitoring itself."""
    policy = policy or AlertPolicy()
    groups = [_monitoring_group()] + [
        _component_group(name, comp.kind, policy) for name, comp in topology.components.items()
    ]
    for link in topology.links:
        caller = topology.components[link.source].kind
        if caller in ("service", "gateway") and topology.components[link.target].kind == "service":
            groups.append(_link_group(link.source, link.target, link.per_try_timeout_ms, policy))
    return {"groups": groups}


def write_rules(topology: Topology, path: Path, policy: AlertPolicy | None = None) -> Path:
    """Write the rules file for ``topology`` at ``path`` (atomically); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Generated from the topology by management.alerting; edit the topology, not this.\n"
    body = yaml.safe_dump(alert_rules(topology, policy), sort_keys=False, width=4096)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + body, encoding="utf-8")
    tmp.replace(path)
    return path


def _promtool(promtool: str | None) -> str:
    exe = promtool or shutil.which("promtool")
    if exe is None:
        raise ConfigError(
            "promtool is missing: run `make setup` (Debian: apt-get install prometheus)"
        )
    return exe


def check_rules(path: Path, promtool: str | None = None) -> str:
    """``promtool check rules``; returns its output, raises ``ConfigError`` on failure."""
    return _run_promtool([_promtool(promtool), "check", "rules", str(path)], path)


def run_rule_tests(test_file: Path, promtool: str | None = None) -> str:
    """``promtool test rules`` (a unit-test file naming its rule files); ``ConfigError`` on
    a failed test."""
    return _run_promtool([_promtool(promtool), "test", "rules", str(test_file)], test_file)


def _run_promtool(argv: list[str], path: Path) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise ConfigError(f"promtool rejected {path}:\n{output}")
    return output
