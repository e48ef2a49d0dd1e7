"""How the engine signals, stops and starts processes of the stack.

``ProcessControl`` is the small interface process faults use. ``SignalControl`` acts on pids
(read afresh from a callback, since a restarted process has a new pid) and can signal and stop
but not start; ``SupervisorControl`` goes through the embedded stack's supervisord (the
management plane's ``Supervisor`` client) and can do all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp

from chaos.stack import InstanceInfo
from management.supervisor import Supervisor, SupervisorError
from mesh.errors import TestbedError

__all__ = ["ProcessControl", "SignalControl", "SupervisorControl", "wait_ready"]


class ProcessControl(Protocol):
    async def pid(self, inst: InstanceInfo) -> int | None: ...

    async def signal(self, inst: InstanceInfo, sig: int) -> None: ...

    async def stop(self, inst: InstanceInfo) -> None: ...

    async def start(self, inst: InstanceInfo) -> None: ...


def _send(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class SignalControl:
    """Signals to pids; ``pids`` maps an instance id to its current pid (e.g. from the state)."""

    def __init__(self, pids: Callable[[], dict[str, int]] | None = None) -> None:
        self._pids = pids

    async def pid(self, inst: InstanceInfo) -> int | None:
        if self._pids is not None:
            current = (await asyncio.to_thread(self._pids)).get(inst.instance_id)
            if current is not None:
                return current
        return inst.pid

    async def signal(self, inst: InstanceInfo, sig: int) -> None:
        pid = await self.pid(inst)
        if pid is None:
            raise TestbedError(f"no pid known for {inst.instance_id}")
        _send(pid, sig)

    async def stop(self, inst: InstanceInfo) -> None:
        pid = await self.pid(inst)
        if pid is None:
            raise TestbedError(f"no pid known for {inst.instance_id}")
        _send(pid, signal.SIGCONT)
        _send(pid, signal.SIGTERM)

    async def start(self, inst: InstanceInfo) -> None:
        raise TestbedError(
            f"cannot start {inst.instance_id}: no supervisor is known for this stack"
        )


class SupervisorControl(SignalControl):
    """Through the stack's supervisord (management's ``Supervisor``): pid, stop, start."""

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__(None)
        self.supervisor = supervisor

    def _name(self, inst: InstanceInfo) -> str:
        return inst.supervisor_name or inst.instance_id

    async def pid(self, inst: InstanceInfo) -> int | None:
        try:
            info = await self.supervisor.acall("getProcessInfo", self._name(inst), within=10)
        except (SupervisorError, TimeoutError):
            return inst.pid
        pid = int(info.get("pid") or 0)
        return pid if pid > 0 else None

    async def stop(self, inst: InstanceInfo) -> None:
        try:
            await self.supervisor.stop(self._name(inst))
        except (SupervisorError, TimeoutError) as exc:
            raise TestbedError(f"cannot stop {inst.instance_id}: {exc}") from None

    async def start(self, inst: InstanceInfo) -> None:
        try:
            await self.supervisor.start(self._name(inst))
        except (SupervisorError, TimeoutError) as exc:
            raise TestbedError(f"cannot start {inst.instance_id}: {exc}") from None


async def wait_ready(
    session: aiohttp.ClientSession, inst: InstanceInfo, within: float, *, path: str = "/readyz"
) -> float | None:
    """Seconds until ``inst`` answers 200 on ``path``, or ``None`` if not within ``within``."""
    start = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=1.0)
    while time.monotonic() - start < within:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(inst.url + path, timeout=timeout) as resp:
                if resp.status == 200:
                    return round(time.monotonic() - start, 3)
        await asyncio.sleep(0.1)
    return None
