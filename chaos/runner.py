"""Run one experiment against a running stack and reach a verdict.

Phases (each in the journal's timeline): ``preflight`` (the stack matches the experiment's
``requires``, every fault's target resolves, Toxiproxy answers — nothing is touched yet),
``warmup`` (the load starts), ``steady-state-before``, ``method`` (faults, pauses, parallel
and sequential steps, watched by the safeguards), ``settle``, ``steady-state-after`` and
``verify`` (after the load has stopped, e.g. the data audit).

Every fault is written to the journal before it is applied and rolled back when its duration
ends, when a safeguard aborts the method, on Ctrl-C/SIGTERM and on any error; a rollback is
never interrupted by a second Ctrl-C. Verdicts: ``passed`` (every probe within tolerance),
``failed`` (the system deviated), ``aborted`` (a safeguard tripped, the steady state did not
hold before the method, the stack does not fit the experiment, or the user interrupted),
``error`` (the runner itself failed, including a failed rollback).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp

from chaos.alerts import AlertQueryError, alert_firings
from chaos.blind import blind_localization_run
from chaos.detection import detection_section
from chaos.faults import Fault, FaultContext, build_fault
from chaos.faults.processes import ProcessControl
from chaos.faults.toxiproxy import ToxiproxyClient
from chaos.journal import FaultStatus, Journal, Verdict
from chaos.loader import iter_faults
from chaos.localize import localize_run, wait_for_span_files
from chaos.model import (
    BadBuild,
    CanarySpec,
    DeployStep,
    Experiment,
    FaultSpec,
    FaultStep,
    FloodSpec,
    FloodStep,
    LoadSpec,
    LocustProbe,
    NetworkFault,
    ParallelStep,
    PauseStep,
    ProbeSpec,
    ScaleStep,
    SequenceStep,
    ServiceFault,
    Step,
    Target,
)
from chaos.probes import (
    AuditFn,
    AuditOutcome,
    ProbeContext,
    ProbeResult,
    evaluate,
    expand,
    probe_label,
)
from chaos.report import try_write_report
from chaos.stack import InstanceInfo, StackInfo
from chaos.targets import Unit, resolve
from load.runner import LoadPlan, LocustRun
from management.canary import Thresholds
from management.plan import LOCALHOST, InstancePlan
from management.stack import CanaryHook, CanaryResult
from mesh.errors import ConfigError, TestbedError

__all__ = [
    "Management",
    "RunResult",
    "Runner",
    "check_requires",
    "default_audit",
    "expected_outcome",
    "fault_label",
    "flood",
    "load_plan",
    "slug",
]

T = TypeVar("T")
APPLY_TIMEOUT_S = 30.0
ROLLBACK_TIMEOUT_S = 30.0
SPAN_FLUSH_S = 2.5
"""Processes export spans every second: wait this long after the last fault before reading."""
ALERT_SETTLE_S = 15.0
"""After the run, wait up to this long for the alerts a fault raised to resolve (recovery)."""


class Management(Protocol):
    """What the ``scale`` and ``deploy`` steps need of the management plane."""

    async def scale(self, component: str, count: int) -> tuple[list[str], list[str]]: ...

    async def deploy(self, component: str, version: str) -> float: ...

    async def canary(
        self,
        component: str,
        version: str,
        *,
        share: float = ...,
        judge_for: float = ...,
        thresholds: Thresholds | None = ...,
        promote_inconclusive: bool = ...,
        during: CanaryHook | None = ...,
        progress_every: float = ...,
    ) -> CanaryResult: ...


def expected_outcome(
    expect: str, deviation: tuple[str, ...], verdict: Verdict, failed: list[str]
) -> tuple[str, bool]:
    """The outcome's words and whether the run ended as its file expects.

    ``expect: deviate`` is as expected only when exactly the probes it names failed: a
    deviation for another reason (or an extra one) is not the drawback it meant to show.
    """
    if verdict is Verdict.PASSED:
        return ("hypothesis held", True) if expect == "hold" else ("drawback NOT shown", False)
    if verdict is not Verdict.FAILED:
        return verdict.value, False
    if expect == "hold":
        return "deviated", False
    named, seen = set(deviation), set(failed)
    if seen == named:
        return "drawback shown (as expected)", True
    parts = []
    if named - seen:
        parts.append("expected but held: " + ", ".join(sorted(named - seen)))
    if seen - named:
        parts.append("deviated unexpectedly: " + ", ".join(sorted(seen - named)))
    return "deviated, not as named (" + "; ".join(parts) + ")", False


class Aborted(Exception):
    """The method was stopped on purpose (safeguard, interrupt); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "experiment"


@dataclass
class RunResult:
    title: str
    verdict: Verdict
    reason: str | None
    outcome: str
    as_expected: bool
    journal_path: Path
    error_ratio: float | None = None
    p99_ms: float | None = None
    audit: str | None = None
    located: str | None = None
    """Whether the traces located the fault: ``yes (#1)``, ``no (#3)``, ``undetermined``."""
    detected: str | None = None
    """When an alert detected the fault: ``1.8 s`` after it was applied, ``no``, ``error``."""
    ttd_s: tuple[float | None, ...] = ()
    """Time to detect of each applied fault (``None``: no alert detected it)."""
    report_path: Path | None = None
    """The run's ``report.html`` (None when it could not be written; the run is unaffected)."""
    source: str | None = None
    """Where the experiment came from: a shipped experiment's name or the file given."""

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code


@dataclass
class LiveState:
    """What the live view shows; updated by the runner, read by the view."""

    title: str
    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)
    active: dict[str, str] = field(default_factory=dict)
    error_ratio: float | None = None
    p99_ms: float | None = None
    rps: float | None = None
    users: int = 0
    safeguards: dict[str, str] = field(default_factory=dict)
    last_event: str = ""


def default_audit(stack: StackInfo, session: aiohttp.ClientSession) -> AuditFn | None:
    """The services' data audit over their direct addresses (not through Toxiproxy)."""
    addresses = {
        svc: stack.instances_of(svc)[0].address
        for svc in ("orders", "inventory", "payments", "catalog")
        if stack.instances_of(svc)
    }
    if not {"orders", "inventory", "payments"} <= set(addresses):
        return None

    async def audit() -> AuditOutcome:
        from services.audit import run_audit_at

        report = await run_audit_at(addresses, session=session, deadline_seconds=15.0)
        if report.errors:
            return AuditOutcome(None, "audit incomplete: " + "; ".join(report.errors[:3]))
        violations = report.violations
        checked = ", ".join(f"{c.name} {c.checked}" for c in report.checks)
        if not violations:
            return AuditOutcome(0, f"no violation ({checked})")
        shown = "; ".join(f"{v.check}: {v.subject}: {v.message}" for v in violations[:5])
        more = f" (+{len(violations) - 5} more)" if len(violations) > 5 else ""
        return AuditOutcome(len(violations), shown + more)

    return audit


def check_requires(exp: Experiment, stack: StackInfo) -> None:
    """Raise ``ConfigError`` naming every way ``stack`` does not fit ``exp.requires``."""
    problems = []
    for kind, wanted in (
        ("resilience", exp.requires.resilience),
        ("consistency", exp.requires.consistency),
    ):
        have = stack.resilience if kind == "resilience" else stack.consistency
        for comp, mode in wanted.items():
            if have.get(comp) != mode:
                problems.append(f"{comp} runs {kind} {have.get(comp)!r}, needs {mode!r}")
    for comp, count in exp.requires.instances.items():
        if len(stack.instances_of(comp)) < count:
            problems.append(f"{comp} has {len(stack.instances_of(comp))} instances, needs {count}")
    if problems:
        raise ConfigError(
            "the stack does not fit this experiment: "
            + "; ".join(problems)
            + " (edit the topology, or let `testbed demo` set it)"
        )


def load_plan(spec: LoadSpec, stack: StackInfo, out_dir: Path) -> LoadPlan:
    """The Locust plan for an experiment's ``load:`` against ``stack``."""
    return LoadPlan(
        out_dir=out_dir,
        pops=stack.pops(),
        host=stack.urls.get("balancer"),
        users=spec.users,
        spawn_rate=spec.spawn_rate,
        rate=spec.rate,
        shape=spec.shape,
        duration=spec.duration,
        api_key=stack.api_key or "demo-key",
        checkout_weight=spec.checkout_weight if spec.checkout_weight is not None else 2,
        locustfile=Path(spec.locustfile) if spec.locustfile else None,
        workers=spec.workers,
    )


def fault_label(spec: FaultSpec, index: int) -> str:
    """A fault's name: its own, else ``<kind>-<n>`` (the seed's pick depends on it)."""
    return spec.name or f"{spec.type.split('.')[1]}-{index}"


async def flood(session: aiohttp.ClientSession, url: str, spec: FloodSpec) -> dict[str, int]:
    """``spec.concurrency`` clients send ``spec.rate`` requests a second in all to ``url`` with
    ``spec.api_key`` for ``spec.duration`` seconds; the answers counted by status (or error)."""
    codes: dict[str, int] = {}
    interval = spec.concurrency / spec.rate
    end = time.monotonic() + spec.duration
    timeout = aiohttp.ClientTimeout(total=5.0)
    headers = {"X-API-Key": spec.api_key}

    async def worker() -> None:
        while (now := time.monotonic()) < end:
            try:
                async with session.get(url, headers=headers, timeout=timeout) as resp:
                    await resp.read()
                    key = str(resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                key = type(exc).__name__
            codes[key] = codes.get(key, 0) + 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - now)))

    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    return codes


class Runner:
    """Runs one experiment; build it, then ``await runner.run()`` once."""

    def __init__(
        self,
        experiment: Experiment,
        stack: StackInfo,
        *,
        processes: ProcessControl,
        out_dir: Path,
        source: str | None = None,
        audit: Callable[[aiohttp.ClientSession], AuditFn | None] | None = None,
        on_update: Callable[[LiveState], None] | None = None,
        handle_signals: bool = True,
        manage: Management | None = None,
    ) -> None:
        self.exp = experiment
        self.stack = stack
        self.processes = processes
        self.out_dir = out_dir
        self.source = source
        self._audit_factory = audit or (lambda s: default_audit(stack, s))
        self.on_update = on_update
        self.handle_signals = handle_signals
        self.manage = manage
        self._failed: list[str] = []
        self.journal = Journal.create(
            out_dir / "journal.json",
            experiment=experiment.model_dump(mode="json", by_alias=True),
            source=source,
        )
        self.live = LiveState(title=experiment.title)
        self.active: dict[str, tuple[Fault, dict[str, Any]]] = {}
        self.load: LocustRun | None = None
        self._ids = itertools.count(1)
        self._units: dict[int, list[Unit]] = {}
        self._rollback_errors: list[str] = []
        self._interrupted: str | None = None
        self._main: asyncio.Task[Any] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._fctx: FaultContext | None = None
        self._pctx: ProbeContext | None = None

    # -- entry point ---------------------------------------------------------------------------
    async def run(self) -> RunResult:
        self._main = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            async with aiohttp.ClientSession() as session:
                self._session = session
                return await self._run(session)
        finally:
            if self.handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._interrupted is not None:
            self._event(f"{name} again: still rolling back, please wait")
            return
        self._interrupted = f"interrupted ({name})"
        self._event(f"{name}: rolling back every fault, then stopping")
        if self._main is not None:
            self._main.cancel()

    def _event(self, text: str, **fields: Any) -> None:
        self.live.last_event = text
        self.journal.event("note", text=text, **fields)
        self._update()

    def _update(self) -> None:
        if self.on_update is not None:
            self.on_update(self.live)

    async def _run(self, session: aiohttp.ClientSession) -> RunResult:
        verdict: Verdict = Verdict.ERROR
        reason: str | None = "did not finish"
        monitor: asyncio.Task[None] | None = None
        try:
            try:
                with self._phase("preflight"):
                    await self._preflight(session)
                monitor = asyncio.create_task(self._monitor(), name="chaos-monitor")
                verdict, reason = await self._experiment()
            except asyncio.CancelledError:
                if self._interrupted is None:
                    raise
                # The interrupt is handled: roll back, record and report instead of dying.
                uncancel = asyncio.current_task()
                if uncancel is not None:
                    uncancel.uncancel()
                verdict, reason = Verdict.ABORTED, self._interrupted
            except Aborted as exc:
                verdict, reason = Verdict.ABORTED, exc.reason
            except (ConfigError, TestbedError) as exc:
                verdict, reason = (
                    Verdict.ABORTED if isinstance(exc, ConfigError) else Verdict.ERROR,
                    str(exc),
                )
            except Exception as exc:  # the runner's own failure: still roll back and record
                verdict, reason = Verdict.ERROR, f"{type(exc).__name__}: {exc}"
        finally:
            await self._shielded(self._cleanup(monitor))
        if self._rollback_errors and verdict is not Verdict.ERROR:
            verdict = Verdict.ERROR
            reason = "rollback failed: " + "; ".join(self._rollback_errors)
        await self._detect()
        await self._localize()
        result = self._finish(verdict, reason)
        result.report_path = await asyncio.to_thread(try_write_report, result.journal_path)
        return result

    async def _detect(self) -> None:
        """Which alert detected each applied fault, when, and when they cleared (journal
        ``detection``, see ``chaos.detection``); waits up to ``ALERT_SETTLE_S`` for the
        alerts to resolve. Skipped when interrupted or when the stack has no Prometheus."""
        faults = self.journal.data["faults"]
        url = self.stack.prometheus_url
        if self._interrupted or not url or not any(f.get("applied_at") for f in faults):
            return
        with self._phase("detect"):
            start = float(self.journal.data["started_at"]) - 2.0
            settle_until = time.monotonic() + ALERT_SETTLE_S
            section: dict[str, Any]
            try:
                while True:
                    end = time.time()
                    firings = await asyncio.to_thread(alert_firings, url, start, end)
                    section = detection_section(faults, firings, end=end)
                    unresolved = any(
                        f["detected"] and f["recovered_at"] is None for f in section["faults"]
                    )
                    if not unresolved or time.monotonic() >= settle_until:
                        break
                    await asyncio.sleep(1.0)
            except AlertQueryError as exc:  # detection informs; it never changes the verdict
                section = {"error": str(exc), "headline": "error"}
            self.journal.data["detection"] = section
            await self.journal.asave()

    async def _localize(self) -> None:
        """Locate each applied fault from the run's span files (journal ``localization``).

        Skipped when the user interrupted the run (they want it to stop) or when there are no
        span files (spans went to an OTLP collector instead).
        """
        applied = [f for f in self.journal.data["faults"] if f.get("applied_at")]
        traces_dir = self.stack.run_dir / "traces"
        if self._interrupted or not applied or not await asyncio.to_thread(traces_dir.is_dir):
            return
        with self._phase("localize"):
            section: dict[str, Any] | None
            try:
                last = max(float(f.get("rolled_back_at") or time.time()) for f in applied)
                await wait_for_span_files(traces_dir, not_before=last + SPAN_FLUSH_S)
                journal = dict(self.journal.data)
                section = await asyncio.to_thread(localize_run, self.stack.run_dir, journal)
            except Exception as exc:  # localisation informs; it never changes the verdict
                section = {"error": f"{type(exc).__name__}: {exc}", "headline": "error"}
            if section is not None:
                self.journal.data["localization"] = section
                await self.journal.asave()
            try:
                blind = await asyncio.to_thread(
                    blind_localization_run, self.stack.run_dir, dict(self.journal.data)
                )
            except Exception as exc:  # informs, like the window-given one
                blind = {"error": f"{type(exc).__name__}: {exc}", "headline": "error"}
            if blind is not None:
                self.journal.data["blind_localization"] = blind
                await self.journal.asave()

    async def _cleanup(self, monitor: asyncio.Task[None] | None) -> None:
        for fid in list(self.active):
            fault, entry = self.active[fid]
            await self._rollback(fault, entry)
        if monitor is not None:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        if self.load is not None and self.load.running:
            await self.load.stop()
        if self.load is not None:
            self.journal.data["load"] = {
                "plan": {
                    "users": self.load.plan.users,
                    "rate": self.load.plan.rate,
                    "shape": self.load.plan.shape,
                    "duration": self.load.plan.duration,
                    "workers": self.load.plan.workers,
                },
                "summary": self.load.summary(),
                "reports": self.load.reports(),
                "exit_code": self.load.proc.returncode if self.load.proc else None,
                "method": self._method_load(),
            }
            await self.journal.asave()

    def _method_load(self) -> dict[str, Any] | None:
        """What users saw during the method: error ratio and the worst 10 s p99."""
        window = self.journal.phase_window("method")
        if self.load is None or window is None:
            return None
        start, end = window
        stats = self.load.stats
        requests, failures = stats.counts(since=start, until=end)
        return {
            "requests": requests,
            "failures": failures,
            "error_ratio": round(failures / requests, 5) if requests else None,
            "p99_ms": stats.percentile("99%", since=start, until=end),
            "p50_ms": stats.percentile("50%", since=start, until=end),
        }

    # -- phases --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _phase(self, name: str) -> Any:
        self.live.phase = name
        self._update()
        with self.journal.phase(name) as entry:
            yield entry

    async def _preflight(self, session: aiohttp.ClientSession) -> None:
        exp, stack = self.exp, self.stack
        self.journal.data["stack"] = stack.summary()
        check_requires(exp, stack)
        toxiproxy = ToxiproxyClient(stack.toxiproxy_url) if stack.toxiproxy_url else None
        faults = list(iter_faults(exp.method))
        for index, (_, step) in enumerate(faults):
            name = fault_label(step.fault, index + 1)
            self._units[id(step)] = resolve(
                step.fault.target, step.fault.blast_radius, stack, seed=exp.seed, fault_name=name
            )
        if any(isinstance(s.fault, NetworkFault) for _, s in faults):
            if toxiproxy is None:
                raise ConfigError("network faults need Toxiproxy, and this stack has none")
            await toxiproxy.ping()
        self._fctx = FaultContext(stack, session, toxiproxy, self.processes)
        audit = self._audit_factory(session)
        self._pctx = ProbeContext(stack, session, self.journal, None, audit)

    async def _experiment(self) -> tuple[Verdict, str | None]:
        exp = self.exp
        assert self._pctx is not None
        if exp.load is not None:
            with self._phase("warmup"):
                await self._start_load()
                await self._sleep(exp.load.warmup)
        with self._phase("steady-state-before"):
            before = await self._probes(exp.steady_state, "steady_state", "before")
        failed = [r for r in before if not r.ok]
        if failed:
            names = ", ".join(f"{r.name}={_fmt(r.value)}" for r in failed)
            return Verdict.ABORTED, f"steady state not met before the method: {names}"
        with self._phase("method"):
            await self._guarded(self._steps(exp.method))
        with self._phase("settle"):
            await self._sleep(exp.settle)
        with self._phase("steady-state-after"):
            after = await self._probes(exp.steady_state, "steady_state", "after")
        if self.load is not None and self.load.running:
            with self._phase("load-stop"):
                await self.load.stop()
                await self.load.refresh()
        with self._phase("verify"):
            verify = await self._probes(exp.verify, "verify", "after")
        bad = [r for r in (*after, *verify) if not r.ok]
        self._failed = sorted({r.name for r in bad})
        if bad:
            names = "; ".join(
                f"{r.name}={_fmt(r.value)} (wanted {r.tolerance})"
                + (f": {r.detail}" if r.detail and r.value is None else "")
                for r in bad
            )
            return Verdict.FAILED, f"deviated: {names}"
        return Verdict.PASSED, None

    async def _start_load(self) -> None:
        spec = self.exp.load
        assert spec is not None
        plan = load_plan(spec, self.stack, self.out_dir)
        self.load = LocustRun(plan)
        await self.load.start()
        assert self._pctx is not None
        self._pctx.locust = self.load.stats
        self.journal.event(
            "load_started",
            command=" ".join(self.load.command),
            workers=plan.workers,
            pid=self.load.proc.pid if self.load.proc is not None else None,
        )

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but fail early if the load died (its log tail says why)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.5))
            if self.load is not None and self.load.proc is not None and not self.load.running:
                code = self.load.proc.returncode
                if time.monotonic() - (self.load.started_at or 0) < 3 or code not in (0, 1):
                    raise TestbedError(f"the load stopped early ({code}):\n{self.load.log_tail()}")

    async def _probes(self, probes: list[ProbeSpec], section: str, when: str) -> list[ProbeResult]:
        assert self._pctx is not None
        if self.load is not None:
            await self.load.refresh()
        results = []
        for i, probe in enumerate(probes):
            if when not in probe.when:
                continue
            if when == "before" and isinstance(probe, LocustProbe) and probe.over == "method":
                continue
            result = await evaluate(probe, probe_label(probe, i, section), self._pctx)
            self.journal.probe(
                phase=f"{section}:{when}",
                name=result.name,
                value=result.value,
                ok=result.ok,
                tolerance=result.tolerance,
                detail=result.detail,
            )
            self.live.last_event = (
                f"probe {result.name} = {_fmt(result.value)} "
                f"({'ok' if result.ok else 'NOT ' + result.tolerance})"
            )
            self._update()
            results.append(result)
        return results

    # -- the method ----------------------------------------------------------------------------
    async def _guarded(self, method: Coroutine[Any, Any, None]) -> None:
        """Run the method while the safeguards watch; a trip cancels it (faults roll back)."""
        method_task = asyncio.create_task(method, name="chaos-method")
        guard_task = asyncio.create_task(self._safeguards(), name="chaos-safeguards")
        try:
            done, _ = await asyncio.wait(
                {method_task, guard_task}, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            method_task.cancel()
            guard_task.cancel()
            await asyncio.gather(method_task, guard_task, return_exceptions=True)
            raise
        if guard_task in done:
            reason = guard_task.result()
            method_task.cancel()
            await asyncio.gather(method_task, return_exceptions=True)
            if reason is not None:
                raise Aborted(reason)
        guard_task.cancel()
        await asyncio.gather(guard_task, return_exceptions=True)
        method_task.result()

    async def _safeguards(self) -> str | None:
        """Watch every safeguard; the reason of the first one crossed for its duration."""
        guards = self.exp.safeguards
        if not guards:
            await asyncio.Event().wait()
        assert self._pctx is not None
        since: dict[int, float | None] = dict.fromkeys(range(len(guards)))
        last: dict[int, float] = {}
        while True:
            now = time.monotonic()
            for i, guard in enumerate(guards):
                if now - last.get(i, 0.0) < guard.every:
                    continue
                last[i] = now
                name = guard.name or probe_label(guard.probe, i, "safeguard")
                result = await evaluate(guard.probe, name, self._pctx)
                crossed = result.value is not None and not result.ok
                self.live.safeguards[name] = (
                    f"{_fmt(result.value)} {'CROSSED' if crossed else 'ok'} ({result.tolerance})"
                )
                if not crossed:
                    since[i] = None
                    continue
                first = since[i] = since[i] or now
                if now - first >= guard.for_:
                    reason = (
                        f"safeguard {name}: {_fmt(result.value)} outside {result.tolerance} "
                        f"for {now - first:.1f}s"
                    )
                    self.journal.data["safeguards"].append(
                        {
                            "name": name,
                            "value": result.value,
                            "tolerance": result.tolerance,
                            "for": guard.for_,
                            "tripped_at": time.time(),
                            "detail": result.detail,
                        }
                    )
                    self.journal.event("safeguard_tripped", text=reason)
                    return reason
            await asyncio.sleep(0.25)

    async def _steps(self, steps: list[Step]) -> None:
        for step in steps:
            await self._step(step)

    async def _step(self, step: Step) -> None:
        if isinstance(step, PauseStep):
            self.journal.event("pause", seconds=step.pause)
            await self._sleep(step.pause)
        elif isinstance(step, FaultStep):
            await self._fault(step)
        elif isinstance(step, ParallelStep):
            try:
                async with asyncio.TaskGroup() as tg:
                    for sub in step.parallel:
                        tg.create_task(self._step(sub))
            except ExceptionGroup as group:  # report the first failure itself, not the group
                raise group.exceptions[0] from None
        elif isinstance(step, SequenceStep):
            await self._steps(step.sequence)
        elif isinstance(step, ScaleStep | DeployStep):
            await self._manage_step(step)
        elif isinstance(step, FloodStep):
            await self._flood(step)

    async def _manage_step(self, step: ScaleStep | DeployStep) -> None:
        """``scale`` / ``deploy`` through the management plane; the journal times each."""
        if self.manage is None:
            raise ConfigError("scale and deploy steps need the management plane (testbed up)")
        started = time.monotonic()
        if isinstance(step, ScaleStep):
            what = f"scale {step.scale.service}={step.scale.instances}"
            self._event(f"{what}: starting")
            added, removed = await self.manage.scale(step.scale.service, step.scale.instances)
            fields: dict[str, Any] = {"added": added, "removed": removed}
        elif step.deploy.canary is not None:
            what = f"canary {step.deploy.service} {step.deploy.version}"
            self._event(f"{what}: starting ({step.deploy.canary.share:.0%} of the traffic)")
            fields = await self._canary(
                step.deploy.service, step.deploy.version, step.deploy.canary
            )
        else:
            what = f"deploy {step.deploy.service} {step.deploy.version}"
            self._event(f"{what}: starting")
            await self.manage.deploy(step.deploy.service, step.deploy.version)
            fields = {}
        seconds = round(time.monotonic() - started, 2)
        self.journal.event(
            "management", text=f"{what}: done in {seconds} s", seconds=seconds, step=what, **fields
        )
        self._event(f"{what}: done in {seconds} s")

    async def _canary(self, service: str, version: str, spec: CanarySpec) -> dict[str, Any]:
        """A judged canary; the verdict and its numbers go to the journal (``canary``)."""
        assert self.manage is not None
        started = time.monotonic()
        result = await self.manage.canary(
            service,
            version,
            share=spec.share,
            judge_for=spec.judge_for,
            thresholds=Thresholds(
                min_requests=spec.min_requests,
                max_error_ratio_increase=spec.max_error_ratio_increase,
                max_p99_ratio=spec.max_p99_ratio,
            ),
            promote_inconclusive=spec.promote_inconclusive,
            during=self._bad_build(spec.bad_build) if spec.bad_build is not None else None,
            progress_every=5.0,
        )
        verdict = result.judgement
        record: dict[str, Any] = {
            "service": service,
            "version": version,
            "instance": result.instance_id,
            "share_asked": spec.share,
            "share_observed": verdict.share,
            "decision": verdict.decision,
            "reasons": list(verdict.reasons),
            "action": result.action,
            "versions": {
                side.version: {
                    "requests": side.requests,
                    "errors": side.errors,
                    "error_ratio": side.error_ratio,
                    "p99_ms": None if side.p99_seconds is None else side.p99_seconds * 1000,
                }
                for side in (verdict.old, verdict.new)
            },
            "start_s": round(result.start_seconds, 2),
            "judged_s": round(result.judged_seconds, 2),
            "rollback_s": None
            if result.rollback_seconds is None
            else round(result.rollback_seconds, 2),
            "deploy_s": None if result.deploy_seconds is None else round(result.deploy_seconds, 2),
            "total_s": round(time.monotonic() - started, 2),
        }
        self.journal.data.setdefault("canaries", []).append(record)
        self.journal.event(
            "canary", text=f"canary {service} {version}: {verdict.summary()}", **record
        )
        tail = (
            f"rolled back in {result.rollback_seconds:.1f} s"
            if result.rollback_seconds is not None
            else f"promoted, rolling deploy {result.deploy_seconds or 0:.1f} s"
        )
        self._event(f"canary {service} {version}: {verdict.decision}, {tail}")
        return {"canary": record}

    def _bad_build(self, bad: BadBuild) -> CanaryHook:
        """The new version made bad: an in-service fault on the canary instance only, through
        the fault machinery (journaled first, rolled back when the judging ends)."""

        @contextlib.asynccontextmanager
        async def hook(inst: InstancePlan) -> AsyncIterator[None]:
            assert self._fctx is not None
            spec = ServiceFault(
                name="bad-build",
                type=bad.type,
                target=Target(instance=inst.instance_id),
                duration=600.0,  # the fault's own safety switch-off; rolled back at the verdict
                rate=bad.rate,
                status=bad.status,
                latency_ms=bad.latency_ms,
                jitter_ms=bad.jitter_ms,
                routes=bad.routes,
            )
            info = InstanceInfo(
                service=inst.component,
                instance_id=inst.instance_id,
                address=inst.address,
                admin_address=f"{LOCALHOST}:{inst.admin_port}",
                proxy=inst.instance_id if inst.proxy_port else None,
            )
            fault_id = f"{next(self._ids)}-bad-build"
            fault = build_fault(
                fault_id, spec, [Unit(info.instance_id, info.proxy, info)], self._fctx
            )
            async with self._holding(fault_id, fault, "bad build: applying"):
                yield

        return hook

    @contextlib.asynccontextmanager
    async def _holding(self, fault_id: str, fault: Fault, doing: str) -> AsyncIterator[None]:
        """``fault`` journaled (on disk before it is applied), applied, held while the body
        runs, and rolled back whatever happens."""
        entry = self.journal.fault_planned(fault.record())
        self.active[fault_id] = (fault, entry)
        self.live.active[fault_id] = fault.describe()
        self._event(f"{doing} {fault.describe()}")
        try:
            try:
                await asyncio.wait_for(fault.apply(), APPLY_TIMEOUT_S)
            except Exception as exc:
                self.journal.fault_status(entry, FaultStatus.APPLY_FAILED, error=str(exc))
                raise TestbedError(f"could not apply {fault.describe()}: {exc}") from exc
            self.journal.fault_status(entry, FaultStatus.APPLIED, details=dict(fault.details))
            yield
        finally:
            await self._shielded(self._rollback(fault, entry))

    async def _flood(self, step: FloodStep) -> None:
        """One client sends ``rate`` requests a second with its own key; counts the answers."""
        assert self._session is not None
        spec = step.flood
        url = expand(spec.url, self.stack.template_values())
        self._event(f"flood {url} with key {spec.api_key} at {spec.rate:g}/s")
        codes = await flood(self._session, url, spec)
        total = sum(codes.values())
        self.journal.event(
            "flood",
            text=f"flood done: {total} requests {codes}",
            codes=codes,
            requests=total,
            api_key=spec.api_key,
        )
        self._event(f"flood done: {total} requests, answers {codes}")

    async def _fault(self, step: FaultStep) -> None:
        assert self._fctx is not None
        spec: FaultSpec = step.fault
        n = next(self._ids)
        name = spec.name or f"{spec.type.split('.')[1]}-{n}"
        fault_id = f"{n}-{slug(name)}"
        units = self._units[id(step)]
        fault = build_fault(fault_id, spec, units, self._fctx)
        async with self._holding(fault_id, fault, "applying"):
            await asyncio.sleep(spec.duration)

    async def _rollback(self, fault: Fault, entry: dict[str, Any]) -> None:
        if fault.id not in self.active:
            return
        try:
            await asyncio.wait_for(fault.rollback(), ROLLBACK_TIMEOUT_S + _recover(fault))
        except Exception as exc:
            msg = f"{fault.describe()}: {exc or type(exc).__name__}"
            self._rollback_errors.append(msg)
            self.journal.fault_status(
                entry, FaultStatus.ROLLBACK_FAILED, error=str(exc), details=dict(fault.details)
            )
        else:
            self.journal.fault_status(entry, FaultStatus.ROLLED_BACK, details=dict(fault.details))
        finally:
            self.active.pop(fault.id, None)
            self.live.active.pop(fault.id, None)
            self._event(f"rolled back {fault.describe()}")

    async def _shielded(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` to its end even if this task is cancelled meanwhile (then re-cancel)."""
        task = asyncio.ensure_future(coro)
        cancelled = False
        while True:
            try:
                result = await asyncio.shield(task)
                break
            except asyncio.CancelledError:
                if task.done():
                    raise
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
        return result

    # -- watching --------------------------------------------------------------------------------
    async def _monitor(self) -> None:
        """Refresh Locust's stats and the live view every second."""
        while True:
            if self.load is not None:
                with contextlib.suppress(OSError):
                    await self.load.refresh()
                stats = self.load.stats
                latest = stats.latest_timestamp()
                if latest is not None:
                    self.live.error_ratio = stats.error_ratio(since=latest - 5)
                    self.live.p99_ms = stats.current_percentile("99%")
                    self.live.rps = stats.current_rps()
                    self.live.users = stats.user_count()
            self._update()
            await asyncio.sleep(1.0)

    def _finish(self, verdict: Verdict, reason: str | None) -> RunResult:
        exp = self.exp
        if verdict in (Verdict.PASSED, Verdict.FAILED):
            outcome, as_expected = expected_outcome(
                exp.expect, exp.deviation, verdict, self._failed
            )
        else:
            outcome, as_expected = f"{verdict.value}: {reason}", False
        self.journal.data["deviated_probes"] = self._failed
        self.journal.data["as_expected"] = as_expected
        self.journal.finish(verdict, reason, outcome)
        self.live.phase = f"done: {verdict.value}"
        self._update()
        return RunResult(
            title=exp.title,
            verdict=verdict,
            reason=reason,
            outcome=outcome,
            as_expected=as_expected,
            journal_path=self.journal.path,
            source=self.source,
            **_headline(self.journal),
        )


def _recover(fault: Fault) -> float:
    return float(getattr(fault.spec, "recover_within", 0.0))


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _headline(journal: Journal) -> dict[str, Any]:
    """Error ratio and p99 during the method, and the audit's value, for summaries."""
    out: dict[str, Any] = {
        "error_ratio": None,
        "p99_ms": None,
        "audit": None,
        "located": None,
        "detected": None,
        "ttd_s": (),
    }
    for probe in journal.data["probes"]:
        name = str(probe["name"])
        if probe["phase"].startswith("verify") and "audit" in name:
            v = probe["value"]
            out["audit"] = "n/a" if v is None else ("pass" if v == 0 else f"{int(v)} violations")
    load = journal.data.get("load") or {}
    method = load.get("method") or {}
    agg = (load.get("summary") or {}).get("Aggregated") or {}
    out["error_ratio"] = method.get("error_ratio", agg.get("error_ratio"))
    out["p99_ms"] = method.get("p99_ms", agg.get("p99"))
    out["located"] = (journal.data.get("localization") or {}).get("headline")
    detection = journal.data.get("detection") or {}
    out["detected"] = detection.get("headline")
    out["ttd_s"] = tuple(f.get("ttd_s") for f in detection.get("faults") or ())
    return out
