"""A Chaos Toolkit control that runs a testbed experiment's frame around Chaos Toolkit's phases.

``testbed chaos run`` does more than steady state, method and rollbacks: load with a warmup,
safeguards that abort the method, a settle time, the load stopped before the final checks, a
last rollback of anything left, the localisation and a verdict. Chaos Toolkit's controls are
its hook for such things, so an exported experiment names this module in its ``controls`` with
the testbed experiment as the argument ``testbed``:

* before the experiment: a fresh journal, the stack checked against ``requires``, the load
  started, the warmup waited;
* before / after the method: the method's window in the journal (the locust probes ``over:
  method`` read it), the safeguards watched in a thread (one crossed for its ``for`` interrupts
  the run, as Chaos Toolkit's own ``exit_gracefully`` does: the fault in effect is rolled
  back), then the settle time;
* before the first ``verify`` probe: the load stopped (as ``testbed chaos run`` verifies);
* after the experiment: the load stopped, every fault still in effect rolled back, the
  localisation, the verdict (Chaos Toolkit's status mapped to the testbed's) and the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import aiohttp

from chaos.ctk import load as ctk_load
from chaos.ctk.actions import rollback, start_load, stop_load
from chaos.ctk.probes import localization
from chaos.ctk.session import Session, run_async, stack_info
from chaos.journal import Journal, Verdict
from chaos.model import Experiment
from chaos.probes import ProbeContext, evaluate, probe_label
from chaos.report import try_write_report
from chaos.runner import check_requires
from management.stack import Stack
from mesh.errors import ConfigError, TestbedError

__all__ = [
    "after_experiment_control",
    "after_method_control",
    "before_activity_control",
    "before_experiment_control",
    "before_method_control",
    "verdict_of",
]

SAFEGUARD_LIFETIME_S = 3600.0


def _experiment(testbed: dict[str, Any]) -> Experiment:
    try:
        return Experiment.model_validate(testbed)
    except ValueError as exc:
        raise ConfigError(f"the control's 'testbed' argument is not an experiment: {exc}") from None


def _interrupt(reason: str) -> None:
    from chaoslib.exceptions import InterruptExecution

    raise InterruptExecution(reason)


def _move(stack: Stack, session: Session, close: str | None, open_: str | None) -> None:
    with session.journal(stack) as journal:
        if close:
            journal.end_phase(close)
        if open_:
            journal.begin_phase(open_)


def before_experiment_control(
    context: dict[str, Any],
    testbed: dict[str, Any],
    configuration: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    exp = _experiment(testbed)
    session = Session.from_configuration(configuration)
    stack = session.stack()
    session.new_journal(stack, exp.model_dump(mode="json", by_alias=True), "chaostoolkit")
    info = run_async(lambda: stack_info(stack))
    with session.journal(stack) as journal:
        journal.data["stack"] = info.summary()
        journal.begin_phase("preflight")
        try:
            check_requires(exp, info)
        except ConfigError as exc:
            journal.end_phase("preflight")
            journal.data["abort_reason"] = str(exc)
            journal.event("note", text=str(exc))
            _interrupt(str(exc))
        journal.end_phase("preflight")
    if exp.load is not None:
        _move(stack, session, None, "warmup")
        start_load(exp.load.model_dump(mode="json"), configuration=configuration)
        time.sleep(exp.load.warmup)
        _move(stack, session, "warmup", None)
    _move(stack, session, None, "steady-state-before")


def before_method_control(
    context: dict[str, Any],
    testbed: dict[str, Any],
    configuration: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    exp = _experiment(testbed)
    session = Session.from_configuration(configuration)
    stack = session.stack()
    _move(stack, session, "steady-state-before", "method")
    if exp.safeguards:
        threading.Thread(
            target=_watch, args=(exp, session, stack), name="testbed-safeguards", daemon=True
        ).start()


def _watch(exp: Experiment, session: Session, stack: Stack) -> None:
    """The safeguards, as ``testbed chaos run`` watches them, until the method ends."""
    try:
        reason = run_async(lambda: _safeguards(exp, session, stack))
    except Exception as exc:  # a broken watcher must not go unnoticed, nor kill the run
        with session.journal(stack) as journal:
            journal.event("note", text=f"safeguards stopped: {type(exc).__name__}: {exc}")
        return
    if reason is None:
        return
    from chaoslib.exit import exit_gracefully

    exit_gracefully()


async def _safeguards(exp: Experiment, session: Session, stack: Stack) -> str | None:
    info = await stack_info(stack)
    out = session.out_dir(stack)
    since: dict[int, float | None] = dict.fromkeys(range(len(exp.safeguards)))
    last: dict[int, float] = {}
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while time.monotonic() - started < SAFEGUARD_LIFETIME_S:
            with session.journal(stack) as journal:
                window = journal.phase_window("method")
                snapshot = Journal(journal.path, journal.data)
            if window is None or window[1] is not None or snapshot.data.get("verdict"):
                return None
            stats = await asyncio.to_thread(ctk_load.stats, out)
            ctx = ProbeContext(info, http, snapshot, stats, None)
            now = time.monotonic()
            for i, guard in enumerate(exp.safeguards):
                if now - last.get(i, 0.0) < guard.every:
                    continue
                last[i] = now
                name = guard.name or probe_label(guard.probe, i, "safeguard")
                result = await evaluate(guard.probe, name, ctx)
                if result.value is None or result.ok:
                    since[i] = None
                    continue
                first = since[i] = since[i] or now
                if now - first >= guard.for_:
                    reason = (
                        f"safeguard {name}: {result.value} outside {result.tolerance} "
                        f"for {now - first:.1f}s"
                    )
                    with session.journal(stack) as journal:
                        journal.data["safeguards"].append(
                            {
                                "name": name,
                                "value": result.value,
                                "tolerance": result.tolerance,
                                "for": guard.for_,
                                "tripped_at": time.time(),
                                "detail": result.detail,
                            }
                        )
                        journal.data["abort_reason"] = reason
                        journal.event("safeguard_tripped", text=reason)
                    return reason
            await asyncio.sleep(0.25)
    return None


def after_method_control(
    context: Any,
    testbed: dict[str, Any],
    configuration: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    exp = _experiment(testbed)
    session = Session.from_configuration(configuration)
    stack = session.stack()
    _move(stack, session, "method", "settle")
    time.sleep(exp.settle)
    _move(stack, session, "settle", "steady-state-after")


def before_activity_control(
    context: dict[str, Any],
    testbed: dict[str, Any],
    verify: list[str] | None = None,
    configuration: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    """Before the first ``verify`` probe after the method: stop the load, as the testbed does."""
    if context.get("type") != "probe" or context.get("name") not in (verify or []):
        return
    session = Session.from_configuration(configuration)
    stack = session.stack()
    with session.journal(stack) as journal:
        after = journal.phase_window("method") is not None
        in_verify = journal.current_phase() == "verify"
    if not after or in_verify:
        return
    _move(stack, session, "steady-state-after", "load-stop")
    _record_load(session, stack, stop_load(configuration=configuration))
    _move(stack, session, "load-stop", "verify")


def _record_load(session: Session, stack: Stack, stopped: dict[str, Any]) -> None:
    from load.runner import read_summary

    out = session.out_dir(stack)
    record = ctk_load.record_of(out)
    if record is None:
        return
    prefix = ctk_load.load_plan_prefix(out)
    stats = ctk_load.stats(out)
    with session.journal(stack) as journal:
        method: dict[str, Any] | None = None
        window = journal.phase_window("method")
        if stats is not None and window is not None:
            requests, failures = stats.counts(since=window[0], until=window[1])
            method = {
                "requests": requests,
                "failures": failures,
                "error_ratio": round(failures / requests, 5) if requests else None,
                "p99_ms": stats.percentile("99%", since=window[0], until=window[1]),
            }
        journal.data["load"] = {
            "plan": record["plan"],
            "summary": read_summary(prefix) if prefix else {},
            "reports": record["reports"],
            "exit_code": None,
            "method": method,
        }
        journal.save()


def verdict_of(ctk_journal: dict[str, Any]) -> Verdict:
    """The testbed's verdict for a Chaos Toolkit journal.

    ``completed`` with the steady state met before and after: passed; ``deviated``: failed;
    the steady state not met before the method, ``interrupted`` (a safeguard, Ctrl-C) or
    ``aborted``: aborted; a probe or action that raised (``failed``): error.
    """
    status = ctk_journal.get("status")
    before = (ctk_journal.get("steady_states") or {}).get("before") or {}
    if ctk_journal.get("deviated"):
        return Verdict.FAILED
    if status == "completed":
        return Verdict.ABORTED if before.get("steady_state_met") is False else Verdict.PASSED
    if status in ("interrupted", "aborted"):
        return Verdict.ABORTED
    return Verdict.ERROR


def after_experiment_control(
    context: dict[str, Any],
    testbed: dict[str, Any],
    state: dict[str, Any] | None = None,
    configuration: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    exp = _experiment(testbed)
    session = Session.from_configuration(configuration)
    stack = session.stack()
    if ctk_load.running(session.out_dir(stack)):
        _record_load(session, stack, stop_load(configuration=configuration))
    problems: list[str] = []
    try:
        rollback(configuration=configuration)
    except TestbedError as exc:
        problems.append(f"rollback failed: {exc}")
    with session.journal(stack) as journal:
        for entry in list(journal.data["timeline"]):
            if entry["end"] is None:
                journal.end_phase(entry)
        interrupted = (state or {}).get("status") == "interrupted"
        abort_reason = journal.data.get("abort_reason")
    if not interrupted:
        with contextlib.suppress(Exception):  # the localisation informs, never decides
            localization(configuration=configuration)
    verdict = Verdict.ERROR if problems else verdict_of(state or {})
    reason = "; ".join(problems) or abort_reason or _reason(state or {}, verdict)
    outcome = {
        Verdict.PASSED: "hypothesis held" if exp.expect == "hold" else "drawback NOT shown",
        Verdict.FAILED: "deviated" if exp.expect == "hold" else "drawback shown (as expected)",
    }.get(verdict, f"{verdict.value}: {reason}")
    with session.journal(stack) as journal:
        journal.data["as_expected"] = (exp.expect == "hold" and verdict is Verdict.PASSED) or (
            exp.expect == "deviate" and verdict is Verdict.FAILED
        )
        journal.data["chaostoolkit"] = {
            "status": (state or {}).get("status"),
            "deviated": (state or {}).get("deviated"),
        }
        journal.finish(verdict, reason, outcome)
        path = journal.path
    try_write_report(path)


def _reason(state: dict[str, Any], verdict: Verdict) -> str | None:
    if verdict is Verdict.PASSED:
        return None
    for when in ("after", "before"):
        hypo = (state.get("steady_states") or {}).get(when) or {}
        bad = [p for p in hypo.get("probes", []) if p.get("tolerance_met") is False]
        if bad:
            names = ", ".join(str(p["activity"].get("name")) for p in bad)
            return f"steady state not met {when} the method: {names}"
    return f"chaostoolkit status {state.get('status')}"
