"""Process faults: ``kill`` (SIGKILL), ``freeze`` (SIGSTOP, then SIGCONT), graceful ``stop``.

``kill`` relies on the supervisor to restart the process; right after the kill a watcher
measures how long the instance takes to answer ``/readyz`` again (recorded in the journal as
``recovered_after_s``). Rolling a kill back means making sure the instance runs: if it is not
ready within ``recover_within`` the engine starts it itself.
"""

from __future__ import annotations

import asyncio
import signal

from chaos.faults.base import Fault, FaultContext
from chaos.faults.processes import wait_ready
from chaos.model import ProcessFault
from chaos.stack import InstanceInfo
from chaos.targets import Unit
from mesh.errors import TestbedError

__all__ = ["ProcessFaultAdapter"]


class ProcessFaultAdapter(Fault):
    spec: ProcessFault

    def __init__(
        self, fault_id: str, spec: ProcessFault, units: list[Unit], ctx: FaultContext
    ) -> None:
        super().__init__(fault_id, spec, units, ctx)
        self._watchers: dict[str, asyncio.Task[float | None]] = {}

    def _instances(self) -> list[InstanceInfo]:
        found = [u.instance for u in self.units if u.instance is not None]
        if len(found) != len(self.units):
            raise TestbedError("process faults act on instances, not links")
        return found

    async def apply(self) -> None:
        ctl = self.ctx.processes
        pids: dict[str, int | None] = {}
        for inst in self._instances():
            pids[inst.instance_id] = await ctl.pid(inst)
            match self.spec.type:
                case "process.kill":
                    await ctl.signal(inst, signal.SIGKILL)
                    self._watchers[inst.instance_id] = asyncio.create_task(
                        self._watch(inst), name=f"recovery-{inst.instance_id}"
                    )
                case "process.freeze":
                    await ctl.signal(inst, signal.SIGSTOP)
                case "process.stop":
                    await ctl.stop(inst)
        self.details["pids"] = pids

    async def _watch(self, inst: InstanceInfo) -> float | None:
        # Give the dying process a moment so the old listener is not mistaken for the new one.
        await asyncio.sleep(0.2)
        return await wait_ready(self.ctx.session, inst, self.spec.recover_within)

    async def rollback(self) -> None:
        ctl = self.ctx.processes
        problems: list[str] = []
        recovered: dict[str, float | None] = {}
        for inst in self._instances():
            if self.spec.type == "process.freeze":
                await ctl.signal(inst, signal.SIGCONT)
                continue
            watcher = self._watchers.pop(inst.instance_id, None)
            took: float | None = None
            if watcher is not None:
                took = await watcher
                if took is not None:
                    took = round(took + 0.2, 3)
            else:  # rebuilt from the journal, or a stop: is it running now?
                took = await wait_ready(self.ctx.session, inst, 1.0)
            if took is None:
                await ctl.start(inst)
                took = await wait_ready(self.ctx.session, inst, self.spec.recover_within)
                if took is None:
                    problems.append(f"{inst.instance_id} is not ready after a restart")
            recovered[inst.instance_id] = took
        if recovered:
            self.details["recovered_after_s"] = recovered
        if problems:
            raise TestbedError("; ".join(problems))
