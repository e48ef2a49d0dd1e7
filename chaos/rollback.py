"""Undo what a crashed or killed runner left behind, from its journals and the stack itself.

First the load of every run that never finished is stopped (a runner killed with -9 leaves its
Locust driving load until its end). Then every fault a journal in
``<run>/chaos/*/journal.json`` still shows as applying, applied or failed to roll back is
rebuilt from its record and rolled back (the journal is updated). Then a sweep puts the stack
back to a clean state whatever the journals say: every toxic the engine names (``chaos.*``) is
removed and every disabled proxy enabled, every stopped (frozen) process continued, every
supervised instance that is not running started, and every in-service fault switched off.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

import aiohttp

from chaos.faults import FaultContext, fault_from_record
from chaos.faults.network import TOXIC_PREFIX
from chaos.faults.processes import ProcessControl
from chaos.faults.toxiproxy import ToxiproxyClient, ToxiproxyError
from chaos.journal import FaultStatus, Verdict, read_journal
from chaos.lock import stop_orphaned_load
from chaos.stack import StackInfo

__all__ = ["rollback_leftovers"]


def _journals(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "chaos").glob("*/journal.json"))


def _frozen(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "T"


def _stop_load(data: dict[str, Any], path: Path) -> list[str]:
    """Stop the Locust an unfinished run started, if it still drives load."""
    actions: list[str] = []
    for event in data.get("events", []):
        pid = event.get("pid") if event.get("kind") == "load_started" else None
        if isinstance(pid, int) and stop_orphaned_load(pid):
            actions.append(f"stopped the load (Locust pid {pid}) of {path.parent.name}")
    return actions


async def rollback_leftovers(
    stack: StackInfo, processes: ProcessControl, *, sweep: bool = True
) -> list[str]:
    """Roll back leftovers; returns one line per action taken (empty: nothing to do)."""
    actions: list[str] = []
    toxiproxy = ToxiproxyClient(stack.toxiproxy_url) if stack.toxiproxy_url else None
    async with aiohttp.ClientSession() as session:
        ctx = FaultContext(stack, session, toxiproxy, processes)
        for path in _journals(stack.run_dir):
            try:
                journal = await asyncio.to_thread(read_journal, path)
            except (OSError, ValueError):
                continue
            if journal.data.get("verdict") is None:
                actions += await asyncio.to_thread(_stop_load, journal.data, path)
            pending = journal.pending_faults()
            for entry in pending:
                fault = fault_from_record(entry, ctx)
                try:
                    await fault.rollback()
                except Exception as exc:
                    journal.fault_status(entry, FaultStatus.ROLLBACK_FAILED, error=str(exc))
                    actions.append(f"FAILED to roll back {fault.describe()} ({path}): {exc}")
                else:
                    journal.fault_status(
                        entry, FaultStatus.ROLLED_BACK, by="testbed chaos rollback"
                    )
                    actions.append(f"rolled back {fault.describe()} ({path.parent.name})")
            if pending and journal.data.get("verdict") is None:
                journal.finish(Verdict.ERROR, "the runner stopped before it finished; rolled back")
        if sweep:
            actions += await _sweep(stack, processes, toxiproxy, session)
    return actions


async def _sweep(
    stack: StackInfo,
    processes: ProcessControl,
    toxiproxy: ToxiproxyClient | None,
    session: aiohttp.ClientSession,
) -> list[str]:
    actions: list[str] = []
    if toxiproxy is not None:
        try:
            proxies = await toxiproxy.proxies()
        except ToxiproxyError as exc:
            actions.append(f"Toxiproxy not checked: {exc}")
            proxies = {}
        for name, enabled in proxies.items():
            if not enabled:
                await toxiproxy.set_enabled(name, True)
                actions.append(f"enabled proxy {name}")
            for toxic in await toxiproxy.toxics(name):
                if toxic.name.startswith(TOXIC_PREFIX):
                    await toxiproxy.remove_toxic(name, toxic.name)
                    actions.append(f"removed toxic {toxic.name} from {name}")
    for inst in stack.instances:
        pid = await processes.pid(inst)
        if pid is not None and _frozen(pid):
            await processes.signal(inst, signal.SIGCONT)
            actions.append(f"continued frozen {inst.instance_id} (pid {pid})")
        elif pid is None:
            with contextlib.suppress(Exception):
                await processes.start(inst)
                actions.append(f"started {inst.instance_id}")
        if inst.admin_url:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.delete(
                    inst.admin_url + "/faults",
                    headers={"X-Admin-Token": stack.admin_token},
                    timeout=aiohttp.ClientTimeout(total=3.0),
                ) as resp:
                    if resp.status == 200:
                        cleared = (await resp.json()).get("cleared", 0)
                        if cleared:
                            actions.append(f"switched off {cleared} fault(s) in {inst.instance_id}")
    return actions
