"""Chaos Toolkit actions: the testbed's faults, their rollback, load, scale and deploy.

Each function is what a provider ``{"type": "python", "module": "chaos.ctk.actions", "func":
...}`` calls; ``configuration`` (``testbed_run_dir``, ``testbed_name``) is passed by Chaos
Toolkit. Faults use the testbed's own engine: the spec is validated as in an experiment file,
its target resolved with the blast radius and the seed (``chaos.targets``), the fault recorded
in the run's journal before it is applied (``chaos.faults``), so ``rollback`` — or ``testbed
chaos rollback`` after a crash — can always undo it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from pydantic import TypeAdapter, ValidationError

from chaos.ctk import load as ctk_load
from chaos.ctk.session import Session, fault_context, run_async, stack_info
from chaos.faults import build_fault, fault_from_record
from chaos.journal import FaultStatus
from chaos.model import (
    DeployStep,
    FaultStep,
    FloodStep,
    LoadSpec,
    ParallelStep,
    PauseStep,
    ScaleStep,
    SequenceStep,
    Step,
)
from chaos.probes import expand
from chaos.rollback import rollback_leftovers
from chaos.runner import fault_label, flood, load_plan, slug
from chaos.targets import resolve
from management.stack import Stack
from mesh.errors import ConfigError, TestbedError

__all__ = ["deploy", "fault", "rollback", "scale", "start_load", "steps", "stop_load"]

APPLY_TIMEOUT_S = 30.0
ROLLBACK_TIMEOUT_S = 30.0
_STEPS = TypeAdapter(list[Step])


def _problems(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}.{loc}: {err['msg']}" if loc else f"{where}: {err['msg']}")
    return "; ".join(parts)


def _fault_step(spec: Mapping[str, Any]) -> FaultStep:
    try:
        return FaultStep.model_validate({"fault": dict(spec)})
    except ValidationError as exc:
        raise ConfigError(_problems(exc, "spec")) from None


async def _hold(
    stack: Stack, session: Session, step: FaultStep, *, seed: int, hold: bool, index: int = 1
) -> dict[str, Any]:
    """Apply one fault; with ``hold``, keep it ``duration`` seconds and roll it back."""
    spec = step.fault
    info = await stack_info(stack)
    name = fault_label(spec, index)
    units = resolve(spec.target, spec.blast_radius, info, seed=seed, fault_name=name)
    async with aiohttp.ClientSession() as http:
        ctx = fault_context(stack, info, http)
        with session.journal(stack) as journal:
            fault_id = f"{len(journal.data['faults']) + 1}-{slug(name)}"
            fault = build_fault(fault_id, spec, units, ctx)
            journal.fault_planned(fault.record())  # on disk before it is applied
            journal.event("note", text=f"applying {fault.describe()}")

        def status(new: FaultStatus, **fields: Any) -> None:
            with session.journal(stack) as j:
                entry = next(f for f in j.data["faults"] if f["id"] == fault_id)
                j.fault_status(entry, new, **fields)

        try:
            await asyncio.wait_for(fault.apply(), APPLY_TIMEOUT_S)
        except Exception as exc:
            status(FaultStatus.APPLY_FAILED, error=str(exc))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(fault.rollback(), ROLLBACK_TIMEOUT_S)
            raise TestbedError(f"could not apply {fault.describe()}: {exc}") from exc
        status(FaultStatus.APPLIED, details=dict(fault.details))
        if not hold:
            return {"fault": fault_id, "applied": fault.describe(), "units": [u.id for u in units]}
        try:
            await asyncio.sleep(spec.duration)
        finally:
            # Also when Chaos Toolkit interrupts the run (a safeguard, Ctrl-C): undo first.
            recover = float(getattr(spec, "recover_within", 0.0))
            try:
                await asyncio.wait_for(fault.rollback(), ROLLBACK_TIMEOUT_S + recover)
            except Exception as exc:
                status(FaultStatus.ROLLBACK_FAILED, error=str(exc), details=dict(fault.details))
                raise TestbedError(f"could not roll back {fault.describe()}: {exc}") from exc
            status(FaultStatus.ROLLED_BACK, details=dict(fault.details))
    return {
        "fault": fault_id,
        "applied": fault.describe(),
        "units": [u.id for u in units],
        "held_s": spec.duration,
        "details": fault.details,
    }


def fault(
    spec: dict[str, Any],
    seed: int = 0,
    hold: bool = True,
    index: int = 1,
    configuration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Inject one fault, written as in a testbed experiment's ``fault:`` step.

    ``spec``: ``{"type": "network.latency", "target": {"service": "payments"},
    "blast_radius": "one", "duration": "20s", "latency_ms": 300}`` — every fault type of the
    testbed (``network.*`` through Toxiproxy, ``process.*`` through the supervisor,
    ``service.*`` through the admin API), on a service, an instance or a link. The blast radius
    picks instances from ``seed`` and the fault's name as ``testbed chaos run`` does (``index``:
    the fault's position in its experiment, for faults without a name). ``hold`` (default):
    keep it ``duration`` seconds, then roll it back; ``hold: false``: leave it in place for the
    experiment's ``rollbacks`` (``chaos.ctk.actions.rollback``).
    """
    step = _fault_step(spec)  # checked before anything is touched
    session = Session.from_configuration(configuration)
    stack = session.stack()
    return run_async(lambda: _hold(stack, session, step, seed=seed, hold=hold, index=index))


async def _steps(
    stack: Stack, session: Session, items: list[Step], seed: int, counter: list[int]
) -> None:
    for item in items:
        if isinstance(item, PauseStep):
            await asyncio.sleep(item.pause)
        elif isinstance(item, FaultStep):
            counter[0] += 1
            await _hold(stack, session, item, seed=seed, hold=True, index=counter[0])
        elif isinstance(item, ParallelStep):
            # Number the members' faults as the testbed does (depth first), whatever order
            # they start in: the seed's pick depends on each fault's number.
            offset = counter[0]
            async with asyncio.TaskGroup() as tg:
                for sub in item.parallel:
                    tg.create_task(_steps(stack, session, [sub], seed, [offset]))
                    offset += _count(sub)
            counter[0] = offset
        elif isinstance(item, SequenceStep):
            await _steps(stack, session, item.sequence, seed, counter)
        elif isinstance(item, ScaleStep):
            await stack.scale(item.scale.service, item.scale.instances)
        elif isinstance(item, DeployStep):
            await stack.deploy(item.deploy.service, item.deploy.version)
        elif isinstance(item, FloodStep):
            info = await stack_info(stack)
            url = expand(item.flood.url, info.template_values())
            async with aiohttp.ClientSession() as http:
                await flood(http, url, item.flood)


def _count(step: Step) -> int:
    if isinstance(step, FaultStep):
        return 1
    if isinstance(step, ParallelStep):
        return sum(_count(s) for s in step.parallel)
    if isinstance(step, SequenceStep):
        return sum(_count(s) for s in step.sequence)
    return 0


def steps(
    steps: list[dict[str, Any]],
    seed: int = 0,
    first_index: int = 1,
    configuration: dict[str, Any] | None = None,
) -> str:
    """Run a fragment of a testbed method (``pause``, ``fault``, ``parallel``, ``sequence``,
    ``scale``, ``deploy``, ``flood``).

    Chaos Toolkit's own background activities run until the end of the method; a testbed
    ``parallel:`` group ends when its last member does, so exported groups use this action.
    """
    try:
        parsed = _STEPS.validate_python(steps)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, "steps")) from None
    session = Session.from_configuration(configuration)
    stack = session.stack()
    counter = [first_index - 1]
    run_async(lambda: _steps(stack, session, parsed, seed, counter))
    return f"{counter[0] - first_index + 1} fault(s) applied and rolled back"


def rollback(sweep: bool = False, configuration: dict[str, Any] | None = None) -> list[str]:
    """Roll back every fault this run's journal still shows in effect.

    ``sweep``: then put the whole stack back to a clean state as ``testbed chaos rollback``
    does (every ``chaos.*`` toxic, frozen or stopped process and in-service fault).
    """
    session = Session.from_configuration(configuration)
    stack = session.stack()

    async def go() -> list[str]:
        info = await stack_info(stack)
        done: list[str] = []
        async with aiohttp.ClientSession() as http:
            ctx = fault_context(stack, info, http)
            with session.journal(stack) as journal:
                pending = journal.pending_faults()
            for entry in pending:
                f = fault_from_record(entry, ctx)
                try:
                    await asyncio.wait_for(f.rollback(), ROLLBACK_TIMEOUT_S + 30.0)
                except Exception as exc:
                    with session.journal(stack) as j:
                        e = next(x for x in j.data["faults"] if x["id"] == entry["id"])
                        j.fault_status(e, FaultStatus.ROLLBACK_FAILED, error=str(exc))
                    done.append(f"FAILED to roll back {f.describe()}: {exc}")
                else:
                    with session.journal(stack) as j:
                        e = next(x for x in j.data["faults"] if x["id"] == entry["id"])
                        j.fault_status(e, FaultStatus.ROLLED_BACK, by="chaos.ctk.actions.rollback")
                    done.append(f"rolled back {f.describe()}")
            if sweep:
                done += await rollback_leftovers(info, ctx.processes, sweep=True)
        return done

    actions = run_async(go)
    failed = [a for a in actions if a.startswith("FAILED")]
    if failed:
        raise TestbedError("; ".join(failed))
    return actions


def start_load(
    load: dict[str, Any] | None = None, configuration: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Start the shoppers (Locust, headless) as an experiment's ``load:`` describes them.

    ``load``: ``{"users": 20, "duration": "90s", "workers": 2, ...}`` (default: 10 users for
    60 s). The statistics land in this run's folder; ``chaos.ctk.probes.locust`` reads them.
    """
    try:
        spec = LoadSpec.model_validate(load or {})
    except ValidationError as exc:
        raise ConfigError(_problems(exc, "load")) from None
    session = Session.from_configuration(configuration)
    stack = session.stack()
    out = session.out_dir(stack)
    if ctk_load.running(out):
        raise TestbedError(f"a load is already running for {out}; stop it first (stop_load)")
    info = run_async(lambda: stack_info(stack))
    plan = load_plan(spec, info, out)
    if not plan.pops and not plan.host:
        raise TestbedError("the stack has no CDN PoP and no balancer to send load to")
    record = ctk_load.start(plan)
    with session.journal(stack) as journal:
        journal.event("load_started", command=" ".join(record["command"]), workers=plan.workers)
    return {"master_pid": record["master"], "workers": record["workers"], "out": str(out)}


def stop_load(configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stop the load (Locust writes its reports); its summary."""
    from load.runner import read_summary

    session = Session.from_configuration(configuration)
    stack = session.stack()
    out = session.out_dir(stack)
    record = ctk_load.stop(out)
    if record is None:
        return {"stopped": False, "reason": "no load was started"}
    summary = read_summary(ctk_load.load_plan_prefix(out) or out / "locust")
    return {"stopped": True, "summary": summary.get("Aggregated", {}), "at": time.time()}


def scale(service: str, count: int, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``count`` instances of ``service`` (as ``testbed scale``)."""
    stack = Session.from_configuration(configuration).stack()
    added, removed = run_async(lambda: stack.scale(service, int(count)))
    return {"added": added, "removed": removed}


def deploy(
    service: str, version: str, configuration: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Rolling deploy of ``version`` to ``service`` (as ``testbed deploy``)."""
    stack = Session.from_configuration(configuration).stack()
    seconds = run_async(lambda: stack.deploy(service, version))
    return {"service": service, "version": version, "seconds": round(seconds, 2)}
