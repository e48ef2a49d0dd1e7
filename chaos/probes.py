"""Probes: measure one value of the running system and judge it against a tolerance.

Kinds: PromQL against the stack's Prometheus (``/api/v1/query``), an HTTP check, Locust's live
statistics of the experiment's load, the data audit across services, and the time from a
fault to the load balancer's ejection of the faulted instance (its admin API's
``GET /ejections``). A probe that cannot
measure (Prometheus unreachable, no requests yet) has no value, which no tolerance accepts; its
``detail`` says why.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from chaos.journal import Journal
from chaos.model import (
    AuditProbe,
    EjectionProbe,
    HttpProbe,
    LocustProbe,
    ProbeSpec,
    PrometheusProbe,
)
from chaos.stack import StackInfo
from load.stats import LocustStats

__all__ = ["AuditFn", "AuditOutcome", "ProbeContext", "ProbeResult", "evaluate", "measure"]

_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*(?::[a-z0-9_-]+)?)\}")
_PCT = {"p50": "50%", "p95": "95%", "p99": "99%"}


@dataclass(frozen=True)
class AuditOutcome:
    violations: int | None
    """``None`` when the audit could not run (a service unreachable)."""
    detail: str


AuditFn = Callable[[], Awaitable[AuditOutcome]]


@dataclass(frozen=True)
class ProbeResult:
    name: str
    value: float | str | bool | None
    ok: bool
    tolerance: str
    detail: str | None = None


@dataclass
class ProbeContext:
    stack: StackInfo
    session: aiohttp.ClientSession
    journal: Journal
    locust: LocustStats | None = None
    audit: AuditFn | None = None


def expand(template: str, values: dict[str, str]) -> str:
    """Fill ``{balancer}``-style placeholders; an unknown one is an error naming the known."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            known = ", ".join(sorted(values)) or "none"
            raise KeyError(f"unknown placeholder {{{key}}} (known: {known})")
        return values[key].rstrip("/")

    return _PLACEHOLDER.sub(sub, template)


async def _prometheus(p: PrometheusProbe, ctx: ProbeContext) -> tuple[Any, str | None]:
    if not ctx.stack.prometheus_url:
        return None, "this stack has no Prometheus"
    url = ctx.stack.prometheus_url.rstrip("/") + "/api/v1/query"
    timeout = aiohttp.ClientTimeout(total=5.0)
    try:
        async with ctx.session.get(url, params={"query": p.query}, timeout=timeout) as resp:
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return None, f"Prometheus query failed: {exc or type(exc).__name__}"
    if not isinstance(body, dict) or body.get("status") != "success":
        err = body.get("error") if isinstance(body, dict) else body
        return None, f"Prometheus refused the query: {err}"
    data = body["data"]
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return float(result[1]), None
    values = [float(s["value"][1]) for s in result or []]
    values = [v for v in values if v == v]  # drop NaN (e.g. 0/0 rates)
    if not values:
        return p.empty, "no series" if p.empty is None else f"no series: {p.empty}"
    if p.reduce == "single":
        if len(values) > 1:
            return None, f"{len(values)} series; set 'reduce: sum|max|min|avg'"
        return values[0], None
    reduced = {
        "sum": sum(values),
        "max": max(values),
        "min": min(values),
        "avg": sum(values) / len(values),
    }[p.reduce]
    return reduced, f"{p.reduce} of {len(values)} series"


async def _http(p: HttpProbe, ctx: ProbeContext) -> tuple[Any, str | None]:
    try:
        url = expand(p.url, ctx.stack.template_values())
    except KeyError as exc:
        return None, str(exc.args[0])
    headers = dict(p.headers)
    if url.rstrip("/").split("/", 3)[-1].startswith("api/") and ctx.stack.api_key:
        headers.setdefault("X-API-Key", ctx.stack.api_key)
    timeout = aiohttp.ClientTimeout(total=p.timeout)
    try:
        async with ctx.session.request(p.method, url, headers=headers, timeout=timeout) as resp:
            if p.json_path is None:
                return resp.status, None
            body: Any = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        # No answer at all is status 0 (as curl's 000): a value, so safeguards can act on it.
        return (
            0 if p.json_path is None else None
        ), f"{p.method} {url}: {exc or type(exc).__name__}"
    for part in p.json_path.split("."):
        if isinstance(body, dict) and part in body:
            body = body[part]
        elif isinstance(body, list) and part.isdigit() and int(part) < len(body):
            body = body[int(part)]
        else:
            return None, f"no {p.json_path!r} in the answer"
    if isinstance(body, bool | str):
        return body, None
    if isinstance(body, int | float):
        return float(body), None
    return None, f"{p.json_path!r} is not a number, string or boolean"


def _fault_entry(name: str, faults: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The journal's entry of the fault named ``name`` (its own name, or ``<kind>-<n>``)."""
    for entry in faults:
        label = str(entry.get("id", "")).partition("-")[2]
        if entry.get("name") == name or label == name:
            return entry
    return None


async def _listen_address(ctx: ProbeContext, proxy: str) -> str | None:
    """Where Toxiproxy's proxy ``proxy`` listens: the address the balancer knows it by."""
    if not ctx.stack.toxiproxy_url:
        return None
    url = f"{ctx.stack.toxiproxy_url.rstrip('/')}/proxies/{proxy}"
    try:
        async with ctx.session.get(url, timeout=aiohttp.ClientTimeout(total=3.0)) as resp:
            body = await resp.json(content_type=None) if resp.status == 200 else {}
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    listen = body.get("listen") if isinstance(body, dict) else None
    return str(listen) if listen else None


async def _ejection(p: EjectionProbe, ctx: ProbeContext) -> tuple[Any, str | None]:
    entry = _fault_entry(p.fault, ctx.journal.data["faults"])
    if entry is None or not entry.get("applied_at"):
        return None, f"fault {p.fault!r} was not applied"
    applied = float(entry["applied_at"])
    balancers = ctx.stack.instances_of("balancer")
    if not balancers or balancers[0].admin_url is None:
        return None, "this stack has no load balancer with an admin API"
    url = f"{balancers[0].admin_url}/ejections"
    headers = {"X-Admin-Token": ctx.stack.admin_token}
    try:
        async with ctx.session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=5.0)
        ) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                return None, f"GET {url}: {resp.status} {body}"
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return None, f"GET {url}: {exc or type(exc).__name__}"
    events = [e for e in body.get("events", []) if e.get("event") == "ejected"]
    since = float(entry.get("planned_at") or applied)
    found: list[tuple[float, str]] = []
    for unit in entry.get("units") or []:
        inst = unit.get("instance") or {}
        addresses = {inst.get("address")}
        if unit.get("proxy"):
            addresses.add(await _listen_address(ctx, str(unit["proxy"])))
        hits = [e for e in events if e.get("address") in addresses and float(e["at"]) >= since]
        if not hits:
            return None, f"{unit.get('id')} was never taken out of rotation after {p.fault}"
        first = min(hits, key=lambda e: float(e["at"]))
        seconds = max(0.0, float(first["at"]) - applied)
        found.append(
            (
                seconds,
                f"{unit.get('id')} out {seconds:.2f} s after {p.fault} ({first.get('reason')})",
            )
        )
    if not found:
        return None, f"fault {p.fault!r} hit no instance"
    return round(max(s for s, _ in found), 3), "; ".join(text for _, text in found)


def _span(p: LocustProbe, ctx: ProbeContext) -> tuple[float | None, float | None]:
    if p.over == "window":
        latest = ctx.locust.latest_timestamp() if ctx.locust else None
        end = latest if latest is not None else time.time()
        return end - p.window, None
    if p.over == "method":
        window = ctx.journal.phase_window("method")
        if window is None:
            return None, None
        return window[0], window[1]
    return None, None


def _locust(p: LocustProbe, ctx: ProbeContext) -> tuple[Any, str | None]:
    stats = ctx.locust
    if stats is None:
        return None, "no load is running"
    if p.over == "method" and ctx.journal.phase_window("method") is None:
        return None, "the method has not run yet"
    since, until = _span(p, ctx)
    where = f"{p.request}, {p.over}" + (f" {p.window:g}s" if p.over == "window" else "")
    if p.metric in ("error_ratio", "requests", "failures"):
        requests, failures = stats.counts(p.request, since, until)
        if p.metric == "requests":
            return float(requests), where
        if p.metric == "failures":
            return float(failures), where
        if requests == 0:
            return None, f"no request completed ({where})"
        return round(failures / requests, 5), f"{failures}/{requests} failed ({where})"
    if p.metric == "rps":
        return stats.current_rps(p.request), where
    pct = _PCT[p.metric]
    if p.over == "window":
        return stats.current_percentile(pct, p.request), f"{where} (Locust's last 10 s)"
    return stats.percentile(pct, p.request, since, until), f"{where}: worst 10 s window"


async def measure(probe: ProbeSpec, ctx: ProbeContext) -> tuple[Any, str | None]:
    """The probe's current value and a note on how it was obtained (or why it is missing)."""
    if isinstance(probe, PrometheusProbe):
        return await _prometheus(probe, ctx)
    if isinstance(probe, HttpProbe):
        return await _http(probe, ctx)
    if isinstance(probe, LocustProbe):
        return _locust(probe, ctx)
    if isinstance(probe, EjectionProbe):
        return await _ejection(probe, ctx)
    assert isinstance(probe, AuditProbe)
    if ctx.audit is None:
        return None, "no audit is available for this stack"
    outcome = await ctx.audit()
    return (None if outcome.violations is None else float(outcome.violations)), outcome.detail


def probe_label(probe: ProbeSpec, index: int, section: str) -> str:
    if probe.name:
        return probe.name
    if isinstance(probe, LocustProbe):
        return f"{probe.request.lower()}-{probe.metric}"
    return f"{section}-{index + 1}-{probe.type}"


async def evaluate(probe: ProbeSpec, name: str, ctx: ProbeContext) -> ProbeResult:
    value, detail = await measure(probe, ctx)
    ok = probe.tolerance.accepts(value)
    return ProbeResult(name, value, ok, probe.tolerance.describe(), detail)
