"""The soak's nemesis: a seeded schedule of kills, freezes and network cuts over every instance
of every component, and its execution through the chaos engine's faults.

``plan`` is pure: from the targets, the seed and the duration it draws when each fault starts,
what it does, to which instance and for how long. It walks the components in shuffled rounds
(every component, single-instance ones and the registry included, is hit once per round) and
never puts two faults on one instance at once. What each target allows:

* every instance: ``kill`` (SIGKILL; supervisord restarts it) and ``freeze`` (SIGSTOP, then
  SIGCONT);
* an instance behind its own Toxiproxy proxy (services, gateways): ``cut`` — the proxy
  disabled (``network.down``) or every connection reset (``network.reset_peer``);
* a CDN PoP: ``cut`` on its link to the origin. The registry and the balancer have no proxy of
  their own: kill and freeze only.

``Nemesis.run`` applies the schedule with ``chaos.faults`` (each fault written to the journal
before it is applied, so ``testbed chaos rollback`` can undo it after a crash) and rolls back
every fault on every exit path, cancellation included.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos.faults import Fault, FaultContext, build_fault
from chaos.journal import FaultStatus, Journal
from chaos.model import FaultSpec, NetworkFault, ProcessFault, Target
from chaos.stack import StackInfo
from chaos.targets import Unit

__all__ = ["FaultPlan", "Nemesis", "NemesisSettings", "SoakTarget", "plan", "targets_of"]


@dataclass(frozen=True, kw_only=True)
class NemesisSettings:
    interval: float = 2.4
    """Mean seconds between two faults (each gap drawn from 0.5x to 1.5x)."""
    freeze: tuple[float, float] = (1.0, 4.0)
    cut: tuple[float, float] = (1.0, 5.0)
    kill_hold: float = 0.5
    """Seconds after a kill before its rollback starts waiting for the instance to be ready."""
    recover_within: float = 30.0
    weights: tuple[tuple[str, float], ...] = (("kill", 0.45), ("freeze", 0.3), ("cut", 0.25))


@dataclass(frozen=True)
class SoakTarget:
    """An instance the nemesis may hit, and the proxy that cuts its network (if any)."""

    component: str
    unit: Unit
    cut_proxy: str | None


@dataclass(frozen=True)
class FaultPlan:
    at: float
    """Seconds after the nemesis starts."""
    kind: str
    """``kill``, ``freeze`` or ``cut``."""
    component: str
    instance: str
    duration: float
    variant: str = ""
    """For a cut: ``network.down`` or ``network.reset_peer``."""


def targets_of(stack: StackInfo) -> list[SoakTarget]:
    """Every instance of the stack, with the proxy a cut would act on."""
    link_proxy = {link.name.partition("->")[0]: link.proxy for link in stack.links}
    out: list[SoakTarget] = []
    for inst in sorted(stack.instances, key=lambda i: i.instance_id):
        proxy = inst.proxy or link_proxy.get(inst.instance_id)
        out.append(
            SoakTarget(
                component=inst.service,
                unit=Unit(inst.instance_id, proxy, inst),
                cut_proxy=proxy,
            )
        )
    return out


def plan(
    targets: Sequence[SoakTarget], *, seed: int, duration: float, settings: NemesisSettings
) -> list[FaultPlan]:
    """The faults of one soak, reproducible from ``seed``; every one ends before ``duration``."""
    rng = random.Random(f"{seed}:nemesis")
    by_component: dict[str, list[SoakTarget]] = {}
    for t in targets:
        by_component.setdefault(t.component, []).append(t)
    components = sorted(by_component)
    busy_until: dict[str, float] = {}
    out: list[FaultPlan] = []
    at = rng.uniform(0.3, 1.0) * settings.interval
    order: list[str] = []
    while at < duration:
        if not order:
            order = components[:]
            rng.shuffle(order)
        component = order.pop()
        free = [t for t in by_component[component] if busy_until.get(t.unit.id, 0.0) <= at]
        if free:
            target = rng.choice(free)
            kinds = [(k, w) for k, w in settings.weights if k != "cut" or target.cut_proxy]
            kind = rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]
            variant = ""
            if kind == "kill":
                length = settings.kill_hold
            elif kind == "freeze":
                length = round(rng.uniform(*settings.freeze), 2)
            else:
                length = round(rng.uniform(*settings.cut), 2)
                variant = rng.choice(("network.down", "network.reset_peer"))
            if at + length < duration:
                out.append(
                    FaultPlan(
                        at=round(at, 2),
                        kind=kind,
                        component=component,
                        instance=target.unit.id,
                        duration=length,
                        variant=variant,
                    )
                )
                # a killed instance needs a few seconds to come back before its next fault
                busy_until[target.unit.id] = at + length + (5.0 if kind == "kill" else 0.5)
        at += rng.uniform(0.5, 1.5) * settings.interval
    return out


def _spec(p: FaultPlan, settings: NemesisSettings) -> FaultSpec:
    name = f"soak-{p.kind}-{p.instance}"
    target = Target(instance=p.instance)
    if p.kind == "kill":
        return ProcessFault(
            name=name,
            type="process.kill",
            target=target,
            blast_radius="one",
            duration=p.duration,
            recover_within=settings.recover_within,
        )
    if p.kind == "freeze":
        return ProcessFault(
            name=name, type="process.freeze", target=target, blast_radius="one", duration=p.duration
        )
    variant = "network.reset_peer" if p.variant == "network.reset_peer" else "network.down"
    return NetworkFault(
        name=name, type=variant, target=target, blast_radius="one", duration=p.duration
    )


@dataclass
class Nemesis:
    """Applies a schedule; ``run`` returns when every fault has been rolled back."""

    schedule: Sequence[FaultPlan]
    targets: Sequence[SoakTarget]
    ctx: FaultContext
    journal: Journal
    settings: NemesisSettings
    on_event: Callable[[str], None] = lambda _: None
    applied: Counter[str] = field(default_factory=Counter)
    by_component: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    """Faults that could not be applied or rolled back (for the journal)."""
    unrolled: list[str] = field(default_factory=list)
    """Freezes and cuts whose rollback failed: they may still be in effect (a violation)."""
    last_end: float | None = None
    """Wall-clock time the last fault ended: a freeze or cut when rolled back, a kill when
    dealt (the instance's restart counts in the convergence time, not before it)."""
    _active: dict[str, tuple[Fault, dict[str, Any]]] = field(default_factory=dict)
    _rolling: set[asyncio.Task[None]] = field(default_factory=set)
    _ids: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Apply each planned fault at its time until the schedule ends or ``stop`` is set."""
        units = {t.unit.id: t for t in self.targets}
        started = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        try:
            for p in self.schedule:
                wait = started + p.at - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=wait)
                if stop.is_set():
                    break
                target = units[p.instance]
                task = asyncio.create_task(self._one(p, target), name=f"soak-{p.instance}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in list(tasks):
                task.cancel()
            await asyncio.shield(self.rollback_all())

    async def _one(self, p: FaultPlan, target: SoakTarget) -> None:
        self._ids += 1
        unit = target.unit
        if p.kind == "cut" and target.cut_proxy:
            unit = Unit(unit.id, target.cut_proxy, unit.instance)
        fault = build_fault(f"soak{self._ids}", _spec(p, self.settings), [unit], self.ctx)
        entry = self.journal.fault_planned(fault.record())
        entry["soak"] = {"kind": p.kind, "component": p.component, "at": p.at}
        self._active[fault.id] = (fault, entry)
        try:
            await asyncio.wait_for(fault.apply(), timeout=15.0)
        except Exception as exc:
            self.journal.fault_status(entry, FaultStatus.APPLY_FAILED, error=str(exc) or repr(exc))
            self.failures.append(f"applying {fault.describe()}: {exc or type(exc).__name__}")
            # a half-applied fault is still rolled back below
        else:
            self.journal.fault_status(entry, FaultStatus.APPLIED)
            if p.kind == "kill":  # a kill is over once dealt; coming back is recovery
                self._ended()
            self.applied[p.kind] += 1
            self.by_component.setdefault(p.component, Counter())[p.kind] += 1
            self.on_event(f"{p.kind} {p.instance}" + (f" ({p.variant})" if p.variant else ""))
            await asyncio.sleep(p.duration)
        await asyncio.shield(self._start_rollback(fault.id))

    def _start_rollback(self, fault_id: str) -> asyncio.Task[None]:
        task = asyncio.create_task(self._rollback(fault_id), name=f"rollback-{fault_id}")
        self._rolling.add(task)
        task.add_done_callback(self._rolling.discard)
        return task

    async def _rollback(self, fault_id: str) -> None:
        found = self._active.pop(fault_id, None)
        if found is None:
            return
        fault, entry = found
        try:
            # a kill's rollback waits for the restart, then starts it itself if need be
            within = 2 * self.settings.recover_within + 15.0
            await asyncio.wait_for(fault.rollback(), timeout=within)
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            self.journal.fault_status(entry, FaultStatus.ROLLBACK_FAILED, error=message)
            self.failures.append(f"rolling back {fault.describe()}: {message}")
            if fault.spec.type != "process.kill":  # a kill's instance is judged by readiness
                self.unrolled.append(f"{fault.describe()}: {message}")
        else:
            if entry["status"] != FaultStatus.APPLY_FAILED.value:
                self.journal.fault_status(entry, FaultStatus.ROLLED_BACK, details=fault.details)
        if fault.spec.type != "process.kill":
            self._ended()

    def _ended(self) -> None:
        self.last_end = max(self.last_end or 0.0, time.time())

    async def rollback_all(self) -> None:
        """Roll back whatever is still active and wait for every rollback under way."""
        for fid in list(self._active):
            self._start_rollback(fid)
        while self._rolling:
            await asyncio.gather(*list(self._rolling), return_exceptions=True)
