"""Chaos Toolkit probes: PromQL, Locust's statistics, the data audit, HTTP, the localisation.

Each returns the plain value the testbed's probe of the same kind measures (``None`` when it
cannot measure; no tolerance accepts that). ``within`` is the testbed's tolerance as a Chaos
Toolkit probe tolerance (``{"type": "probe", ... "func": "within", "arguments":
{"tolerance": {"max": 2000}}}``): it judges the value as ``testbed chaos run`` would, records
it in the run's journal, and skips probes outside their ``when`` (e.g. the audit, which an
experiment checks after the method only).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import aiohttp
from pydantic import TypeAdapter, ValidationError

from chaos.ctk import load as ctk_load
from chaos.ctk.session import Session, run_async, stack_info
from chaos.journal import Journal
from chaos.localize import localize_run, wait_for_span_files
from chaos.model import ProbeSpec, Tolerance
from chaos.probes import ProbeContext, measure
from chaos.runner import SPAN_FLUSH_S, default_audit
from mesh.errors import ConfigError

__all__ = [
    "audit",
    "ejection",
    "http",
    "localization",
    "locust",
    "phase",
    "prometheus",
    "within",
]

_PROBE: TypeAdapter[Any] = TypeAdapter(cast(Any, ProbeSpec))  # an Annotated union
_ANY = {"min": float("-inf")}
"""Measuring ignores the tolerance; the model needs one."""


def _measure(probe: dict[str, Any], configuration: dict[str, Any] | None) -> Any:
    try:
        spec = _PROBE.validate_python({**probe, "tolerance": _ANY})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid probe: {problems}") from None
    session = Session.from_configuration(configuration)
    stack = session.stack()
    out = session.out_dir(stack)
    with session.journal(stack) as journal:
        snapshot = Journal(journal.path, journal.data)

    async def go() -> Any:
        info = await stack_info(stack)
        stats = await asyncio.to_thread(ctk_load.stats, out)
        async with aiohttp.ClientSession() as http:
            ctx = ProbeContext(info, http, snapshot, stats, default_audit(info, http))
            value, _ = await measure(spec, ctx)
            return value

    return run_async(go)


def prometheus(
    query: str,
    reduce: str = "single",
    empty: float | None = None,
    configuration: dict[str, Any] | None = None,
) -> float | None:
    """An instant PromQL query through the stack's Prometheus (``reduce``: sum, max, min, avg)."""
    probe = {"type": "prometheus", "query": query, "reduce": reduce, "empty": empty}
    value: float | None = _measure(probe, configuration)
    return value


def locust(
    metric: str,
    request: str = "Aggregated",
    over: str = "window",
    window: float = 5.0,
    configuration: dict[str, Any] | None = None,
) -> float | None:
    """The load's statistics: ``error_ratio``, ``p50``/``p95``/``p99`` (ms), ``rps``,
    ``requests`` or ``failures``, of one request name, over the last ``window`` seconds, the
    method (from the control's timeline) or the whole run."""
    probe = {"type": "locust", "metric": metric, "request": request, "over": over}
    value: float | None = _measure({**probe, "window": window}, configuration)
    return value


def audit(configuration: dict[str, Any] | None = None) -> float | None:
    """The data audit across orders, payments, inventory and catalog: violations found."""
    value: float | None = _measure({"type": "audit"}, configuration)
    return value


def ejection(fault: str, configuration: dict[str, Any] | None = None) -> float | None:
    """Seconds from the fault ``fault``'s application until the load balancer took the
    faulted instance out of rotation (its admin API's ``GET /ejections``)."""
    value: float | None = _measure({"type": "ejection", "fault": fault}, configuration)
    return value


def http(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    json_path: str | None = None,
    timeout: float = 3.0,
    configuration: dict[str, Any] | None = None,
) -> Any:
    """An HTTP request (``{balancer}``, ``{pop:sa}``... in ``url``): the status, or a field."""
    probe = {"type": "http", "url": url, "method": method, "headers": headers or {}}
    return _measure({**probe, "json_path": json_path, "timeout": timeout}, configuration)


def localization(configuration: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Locate each fault this run applied from the span files (``chaos.localize``); the
    section is also written to the run's journal. Its ``headline`` says whether the
    injected fault ranked first."""
    session = Session.from_configuration(configuration)
    stack = session.stack()
    with session.journal(stack) as journal:
        data = dict(journal.data)
    applied = [f for f in data["faults"] if f.get("applied_at")]
    traces = stack.run_dir / "traces"
    if not applied or not traces.is_dir():
        return None
    last = max(float(f.get("rolled_back_at") or time.time()) for f in applied)

    async def go() -> dict[str, Any] | None:
        await wait_for_span_files(traces, not_before=last + SPAN_FLUSH_S)
        return await asyncio.to_thread(localize_run, stack.run_dir, data)

    section = run_async(go)
    with session.journal(stack) as journal:
        journal.data["localization"] = section
        journal.save()
    return section


def phase(configuration: dict[str, Any] | None = None) -> str:
    """``before`` until the method has started (the control marks it), then ``after``."""
    session = Session.from_configuration(configuration)
    stack = session.stack()
    with session.journal(stack) as journal:
        return "after" if journal.phase_window("method") is not None else "before"


def within(
    value: Any = None,
    tolerance: dict[str, Any] | None = None,
    name: str = "",
    when: list[str] | None = None,
    configuration: dict[str, Any] | None = None,
) -> bool:
    """A testbed tolerance (``max``/``min``, ``equals``, ``range``) as a probe tolerance.

    A probe asked for outside its ``when`` (``["after"]``: not before the method) is skipped
    (accepted), as ``testbed chaos run`` skips it; a locust probe over the method is skipped
    before the method for the same reason (give ``when: ["after"]``).
    """
    try:
        tol = Tolerance.model_validate(tolerance or {})
    except ValidationError as exc:
        raise ConfigError(f"invalid tolerance {tolerance!r}: {exc.errors()[0]['msg']}") from None
    session = Session.from_configuration(configuration)
    stack = session.stack()
    with session.journal(stack) as journal:
        now = "after" if journal.phase_window("method") is not None else "before"
        if now not in (when or ["before", "after"]):
            journal.event("note", text=f"probe {name or '?'} skipped {now} the method")
            return True
        ok = tol.accepts(value)
        section = "steady_state" if journal.current_phase() != "verify" else "verify"
        journal.probe(
            phase=f"{section}:{now}",
            name=name or "probe",
            value=value,
            ok=ok,
            tolerance=tol.describe(),
            detail="chaostoolkit",
        )
    return ok
