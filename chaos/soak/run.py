"""One soak against the running stack: clients and nemesis, then convergence and the checks.

Phases (each in the journal's timeline):

1. ``preflight`` — the stack runs the saga, every instance is ready, Toxiproxy answers.
2. ``storm`` — the clients check out for ``duration`` seconds; after ``warmup`` the nemesis
   applies its schedule (``chaos.soak.nemesis``). When the schedule ends every fault is rolled
   back and clients stop starting checkouts (they finish, with retries, the one they are on).
3. ``converge`` — from the end of the last fault (a freeze or cut rolled back, a kill dealt),
   the stack is polled every second: every instance ready and registered, no order and no
   charge pending. The convergence time is the first settled poll that stays settled (three
   polls); it must be within ``converge_within``.
4. ``reconcile`` — the checkouts the clients never heard the end of, and a sample of the others,
   are sent once more with the same key and body, as a client would; every answer must name the
   order the key had before.
5. ``verify`` — the data audit and the clients'-view cross-checks (``chaos.soak.checks``) over
   one snapshot, and every instance ready.

Every fault is rolled back on every exit path (Ctrl-C and SIGTERM included); the journal and
``report.html`` are written either way. Exit code: 0 no violation, 1 violations, 2 the soak
could not run (stack not up or not ready, an error of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from chaos.faults import FaultContext
from chaos.faults.processes import SupervisorControl
from chaos.faults.toxiproxy import ToxiproxyClient, ToxiproxyError
from chaos.journal import Journal, Verdict
from chaos.lock import StackLock
from chaos.soak.checks import Sample, convergence_seconds, cross_check, told
from chaos.soak.clients import Clients, ClientSettings
from chaos.soak.nemesis import Nemesis, NemesisSettings, plan, targets_of
from chaos.soak.report import try_write_soak_report
from chaos.stack import StackInfo, from_management
from management.stack import Stack, open_stack
from mesh.discovery import StaticDiscovery
from mesh.errors import TestbedError
from mesh.resilience import profile_named
from mesh.rpc import RpcClient, RpcError
from services.audit import gather_snapshot
from services.audit_checks import CheckResult, run_checks
from services.orders import api as orders_api
from services.payments import api as payments_api

__all__ = ["SoakResult", "SoakSettings", "run_soak"]

POLL_S = 1.0
SETTLED_POLLS = 3
"""Convergence is declared after this many settled polls in a row."""
RESEND_WITHIN_S = 60.0
"""How long the reconcile pass may re-send checkouts before its clients give up."""
FINAL_READY_WITHIN_S = 15.0
"""How long the final check lets an instance that answered during convergence be slow."""


@dataclass(frozen=True, kw_only=True)
class SoakSettings:
    seed: int = 1
    duration: float = 180.0
    warmup: float = 5.0
    converge_within: float = 30.0
    """The bound: every saga finished or compensated, every instance ready, within this."""
    converge_wait: float = 120.0
    """How long to keep polling past the bound, to report the time it did take."""
    client_grace: float = 30.0
    """After the storm, how long clients may go on retrying the checkout they are on."""
    resend_sample: int = 200
    clients: ClientSettings = field(default_factory=ClientSettings)
    nemesis: NemesisSettings = field(default_factory=NemesisSettings)


@dataclass
class SoakResult:
    journal_path: Path
    report_path: Path | None
    violations: list[str]
    summary: dict[str, Any]
    error: str | None = None

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return 2
        return 1 if self.violations else 0


class SoakError(TestbedError):
    """The soak cannot run (the stack is not up, not ready, not in saga mode)."""


def _direct(stack: StackInfo, service: str) -> StaticDiscovery:
    return StaticDiscovery({service: [i.address for i in stack.instances_of(service)]})


async def _not_ready(stack: Stack) -> tuple[str, ...]:
    rows = await stack.status()
    return tuple(
        r.instance
        for r in rows
        if r.ready is False or r.registered is False or r.state not in ("RUNNING", "UNKNOWN")
    )


async def _still_not_ready(stack: Stack, *, within: float) -> tuple[str, ...]:
    """The instances that stay not ready for ``within`` seconds of polling.

    One probe is a poor witness on a loaded machine: a health check that misses its 1 s
    deadline once (a JVM's collection pause, a full run queue) is not a component that failed to
    recover, while one that is still not ready after ``within`` seconds is.
    """
    deadline = time.monotonic() + within
    while True:
        not_ready = await _not_ready(stack)
        if not not_ready or time.monotonic() >= deadline:
            return not_ready
        await asyncio.sleep(POLL_S)


async def _pending(
    info: StackInfo, session: aiohttp.ClientSession
) -> tuple[int | None, int | None]:
    """Orders and charges still pending (None: that service did not answer)."""
    profile = profile_named("basic")
    orders = RpcClient(session, _direct(info, "orders"), "orders", profile=profile, caller="soak")
    payments = RpcClient(
        session, _direct(info, "payments"), "payments", profile=profile, caller="soak"
    )

    async def count_orders() -> int | None:
        try:
            snap = await orders.call(
                orders_api.AUDIT, {}, orders_api.OrdersAudit, timeout=5.0, idempotent=True
            )
        except RpcError:
            return None
        return sum(1 for o in snap.orders if o.status is orders_api.OrderStatus.PENDING)

    async def count_charges() -> int | None:
        try:
            snap = await payments.call(
                payments_api.AUDIT, {}, payments_api.PaymentsAudit, timeout=5.0, idempotent=True
            )
        except RpcError:
            return None
        return sum(1 for c in snap.charges if c.state is payments_api.ChargeState.PENDING)

    pending_orders, pending_charges = await asyncio.gather(count_orders(), count_charges())
    return pending_orders, pending_charges


class Soak:
    def __init__(
        self,
        settings: SoakSettings,
        stack: Stack,
        info: StackInfo,
        out_dir: Path,
        progress: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.stack = stack
        self.info = info
        self.progress = progress
        self.run_id = os.urandom(4).hex()
        self.journal = Journal.create(
            out_dir / "journal.json",
            experiment={
                "title": f"Nemesis soak, seed {settings.seed}",
                "kind": "soak",
                "hypothesis": (
                    "After a storm of kills, freezes and network cuts on every service, every"
                    " checkout converges within the bound and the stores agree with what the"
                    " clients were told."
                ),
                "expect": "hold",
                "seed": settings.seed,
                "settings": asdict(settings),
                "run_id": self.run_id,
            },
            source="soak",
        )
        self.samples: list[Sample] = []
        self.summary: dict[str, Any] = {"seed": settings.seed, "duration_s": settings.duration}
        self.journal.data["soak"] = self.summary
        self.violations: list[str] = []

    async def preflight(self, toxiproxy: ToxiproxyClient) -> None:
        with self.journal.phase("preflight"):
            modes = {self.info.consistency.get(s) for s in ("orders", "inventory", "payments")}
            if modes != {"saga"}:
                raise SoakError(
                    "the soak checks the saga's promises; this stack runs orders in"
                    f" {', '.join(sorted(str(m) for m in modes))} mode (set consistency: saga)"
                )
            try:
                await toxiproxy.ping()
            except ToxiproxyError as exc:
                raise SoakError(str(exc)) from None
            if not_ready := await _still_not_ready(self.stack, within=20.0):
                raise SoakError(
                    f"instances not ready: {', '.join(not_ready)}; check `testbed status`"
                    " and start the soak when every instance is ready"
                )

    async def run(self) -> None:
        s = self.settings
        info = self.info
        toxiproxy = ToxiproxyClient(info.toxiproxy_url or "")
        await self.preflight(toxiproxy)
        entries = [*info.pops().values()]
        if "balancer" in info.urls:
            entries.append(info.urls["balancer"])
        targets = targets_of(info)
        schedule = plan(targets, seed=s.seed, duration=s.duration - s.warmup, settings=s.nemesis)
        self.journal.data["schedule"] = [asdict(p) for p in schedule]
        self.progress(
            f"soak seed {s.seed}: {s.clients.clients} clients for {s.duration:g} s through"
            f" {len(entries)} entries; {len(schedule)} faults planned over"
            f" {len({t.component for t in targets})} components"
        )
        connector = aiohttp.TCPConnector(limit=4 * s.clients.clients)
        async with aiohttp.ClientSession(connector=connector) as session:
            ctx = FaultContext(info, session, toxiproxy, SupervisorControl(self.stack.supervisor))
            clients = Clients(session, entries, s.clients, seed=s.seed, run_id=self.run_id)
            nemesis = Nemesis(
                schedule,
                targets,
                ctx,
                self.journal,
                s.nemesis,
                on_event=lambda e: self.journal.event("fault", what=e),
            )
            client_task = asyncio.create_task(clients.run(), name="soak-clients")
            ticker = asyncio.create_task(self._ticker(clients, nemesis), name="soak-progress")
            try:
                await self._storm(clients, nemesis)
                faults_end = nemesis.last_end or time.time()
                self._record_storm(clients, nemesis)
                await self._converge(session, faults_end)
                # clients that were still retrying while the stack converged stop now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(client_task), timeout=s.client_grace)
                clients.give_up.set()
                await client_task
                await self._reconcile(clients, session)
                await self._verify(clients, session)
            finally:
                ticker.cancel()
                clients.stop.set()
                clients.give_up.set()
                await asyncio.shield(nemesis.rollback_all())
                client_task.cancel()
                await asyncio.gather(client_task, ticker, return_exceptions=True)
                self._record_storm(clients, nemesis)
                self.violations += [f"fault not rolled back: {f}" for f in nemesis.unrolled]

    async def _storm(self, clients: Clients, nemesis: Nemesis) -> None:
        s = self.settings
        with self.journal.phase("storm"):
            await asyncio.sleep(s.warmup)
            stop = asyncio.Event()
            nemesis_task = asyncio.create_task(nemesis.run(stop), name="soak-nemesis")
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.shield(nemesis_task), timeout=s.duration - s.warmup
                    )
            finally:
                stop.set()
                await asyncio.shield(nemesis_task)
            clients.stop.set()
            self.progress("storm over: every fault rolled back; clients finish their checkouts")

    async def _ticker(self, clients: Clients, nemesis: Nemesis) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(10.0)
            told_counts = clients.stats.summary(clients.records)
            applied = ", ".join(f"{k} {v}" for k, v in sorted(nemesis.applied.items())) or "none"
            answers = ", ".join(f"{k} {v}" for k, v in sorted(clients.stats.outcomes.items()))
            self.progress(
                f"  {time.monotonic() - started:5.0f} s  checkouts {told_counts['checkouts']}"
                f" (confirmed {told_counts['confirmed']}, failed {told_counts['failed']},"
                f" pending {told_counts['pending']}, unanswered {told_counts['unanswered']});"
                f" retries {told_counts['retries']}; answers: {answers}; faults: {applied}"
            )

    def _record_storm(self, clients: Clients, nemesis: Nemesis) -> None:
        self.summary["clients"] = clients.stats.summary(clients.records)
        self.summary["faults"] = dict(sorted(nemesis.applied.items()))
        self.summary["faults_by_component"] = {
            c: dict(sorted(k.items())) for c, k in sorted(nemesis.by_component.items())
        }
        self.summary["nemesis_problems"] = list(nemesis.failures)
        self.journal.save()

    async def _converge(self, session: aiohttp.ClientSession, since: float) -> None:
        s = self.settings
        with self.journal.phase("converge"):
            deadline = since + s.converge_within + s.converge_wait
            settled_in_a_row = 0
            while time.time() < deadline and settled_in_a_row < SETTLED_POLLS:
                polled = time.time()
                not_ready, (orders, charges) = await asyncio.gather(
                    _not_ready(self.stack), _pending(self.info, session)
                )
                sample = Sample(
                    at=polled, not_ready=not_ready, pending_orders=orders, pending_charges=charges
                )
                self.samples.append(sample)
                settled_in_a_row = settled_in_a_row + 1 if sample.settled else 0
                if not sample.settled:
                    self.progress(
                        f"  converging, {polled - since:4.1f} s after the last fault:"
                        f" not ready {', '.join(not_ready) or 'none'}; pending orders"
                        f" {'?' if orders is None else orders}, charges"
                        f" {'?' if charges is None else charges}"
                    )
                await asyncio.sleep(max(0.0, POLL_S - (time.time() - polled)))
        took = convergence_seconds(self.samples, since=since)
        self.summary["convergence_s"] = took
        self.summary["convergence_bound_s"] = s.converge_within
        self.summary["samples"] = [asdict(x) for x in self.samples]
        if took is None:
            last = self.samples[-1] if self.samples else None
            self.violations.append(
                f"convergence: not converged {s.converge_within + s.converge_wait:g} s after the"
                " last fault"
                + (
                    f" (not ready: {', '.join(last.not_ready) or 'none'}; pending orders"
                    f" {last.pending_orders}, charges {last.pending_charges})"
                    if last
                    else ""
                )
            )
        elif took > s.converge_within:
            self.violations.append(
                f"convergence: took {took:.1f} s, over the bound of {s.converge_within:g} s"
            )
        self.progress(
            "converged in "
            + ("never" if took is None else f"{took:.1f} s")
            + f" (bound {s.converge_within:g} s)"
        )

    async def _reconcile(self, clients: Clients, session: aiohttp.ClientSession) -> None:
        s = self.settings
        with self.journal.phase("reconcile"):
            open_records = [r for r in clients.records if told(r) in (None, "pending")]
            rest = [r for r in clients.records if told(r) in ("confirmed", "failed")]
            rng = random.Random(f"{s.seed}:reconcile")
            sample = rng.sample(rest, k=min(s.resend_sample, len(rest)))
            clients.give_up.clear()
            resend = asyncio.create_task(clients.resend([*open_records, *sample]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(resend), timeout=RESEND_WITHIN_S)
            clients.give_up.set()
            await resend
            self.summary["resent"] = {"open": len(open_records), "sample": len(sample)}
            self.progress(
                f"re-sent {len(open_records)} unfinished and {len(sample)} finished checkouts"
                " with their keys"
            )
            deadline = time.monotonic() + s.converge_within
            while time.monotonic() < deadline:
                orders, charges = await _pending(self.info, session)
                if orders == 0 and charges == 0:
                    break
                await asyncio.sleep(POLL_S)

    async def _verify(self, clients: Clients, session: aiohttp.ClientSession) -> None:
        info = self.info
        with self.journal.phase("verify"):
            discovery = StaticDiscovery(
                {
                    svc: [i.address for i in info.instances_of(svc)]
                    for svc in ("orders", "inventory", "payments", "catalog")
                }
            )
            snap, errors = await gather_snapshot(discovery, session=session)
            checks: list[CheckResult] = []
            if snap is not None:
                audit = run_checks(snap)
                checks = [*audit.checks, *cross_check(clients.records, snap)]
                self.summary["counts"] = audit.counts
            self.violations += [f"audit: {e}" for e in errors]
            if snap is None:
                self.violations.append("audit: no snapshot of orders, inventory and payments")
            for check in checks:
                self.violations += [
                    f"{v.check}: {v.subject}: {v.message}" for v in check.violations
                ]
            self.summary["checks"] = [
                {
                    "name": c.name,
                    "title": c.title,
                    "checked": c.checked,
                    "violations": [v.model_dump() for v in c.violations[:50]],
                    "violation_count": len(c.violations),
                }
                for c in checks
            ]
            self.summary["missing_confirmations"] = sum(
                1
                for c in checks
                if c.name == "confirmations_kept"
                for v in c.violations
                if "does not know it" in v.message or "stored as" in v.message
            )
            not_ready = await _still_not_ready(self.stack, within=FINAL_READY_WITHIN_S)
            self.summary["not_ready"] = list(not_ready)
            if not_ready:
                self.violations.append(f"instances not ready at the end: {', '.join(not_ready)}")


async def run_soak(
    settings: SoakSettings,
    *,
    run_dir: Path | None = None,
    progress: Callable[[str], None] = print,
    handle_signals: bool = True,
) -> SoakResult:
    """Run one soak against the stack that is up; the journal and report go under
    ``<run>/chaos/<time>-soak-seed<seed>/``."""
    stack = open_stack(run_dir)
    info = await from_management(stack)
    with StackLock(info.run_dir, f"soak (seed {settings.seed})"):
        return await _run_locked(settings, stack, info, progress, handle_signals)


async def _run_locked(
    settings: SoakSettings,
    stack: Stack,
    info: StackInfo,
    progress: Callable[[str], None],
    handle_signals: bool,
) -> SoakResult:
    out = info.run_dir / "chaos" / f"{time.strftime('%Y%m%d-%H%M%S')}-soak-seed{settings.seed}"
    soak = Soak(settings, stack, info, out, progress)
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    interrupted: list[str] = []

    def on_signal(sig: int) -> None:
        if not interrupted and main is not None:
            interrupted.append(signal.Signals(sig).name)
            progress(f"{signal.Signals(sig).name}: stopping, rolling every fault back")
            main.cancel()

    if handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
    error: str | None = None
    try:
        await soak.run()
    except asyncio.CancelledError:
        if not interrupted:
            raise
        error = f"interrupted ({interrupted[0]}); every fault was rolled back"
    except SoakError as exc:
        error = str(exc)
    finally:
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    verdict = Verdict.ERROR if error else (Verdict.FAILED if soak.violations else Verdict.PASSED)
    soak.summary["violations"] = soak.violations[:200]
    soak.summary["violation_count"] = len(soak.violations)
    reason = error or (
        f"{len(soak.violations)} violation(s): {soak.violations[0]}"
        if soak.violations
        else "no violation"
    )
    soak.journal.finish(verdict, reason, outcome=reason)
    report = await asyncio.to_thread(try_write_soak_report, soak.journal.path)
    return SoakResult(
        journal_path=soak.journal.path,
        report_path=report,
        violations=soak.violations,
        summary=soak.summary,
        error=error,
    )
