"""What every Chaos Toolkit activity of the extension shares: the stack and the run's journal.

Chaos Toolkit calls plain module functions (in its main thread, or in a worker thread for
background activities), so nothing is kept in memory between calls: each call opens the stack
the management plane runs and the run's journal on disk, under a file lock so that activities
running in parallel never lose each other's writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from chaos.faults import FaultContext
from chaos.faults.processes import SupervisorControl
from chaos.faults.toxiproxy import ToxiproxyClient
from chaos.journal import Journal, read_journal
from chaos.stack import StackInfo, from_management
from management.stack import Stack, open_stack
from mesh.errors import ConfigError

__all__ = ["DEFAULT_NAME", "Session", "run_async"]

DEFAULT_NAME = "experiment"
T = TypeVar("T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to its end from Chaos Toolkit's synchronous call."""

    async def main() -> T:
        return await make()

    return asyncio.run(main())


@dataclass(frozen=True)
class Session:
    """The stack's run folder and this Chaos Toolkit run's folder in it."""

    run_dir: Path | None
    """``None``: the stack ``testbed up`` started last (as ``testbed chaos run`` uses)."""
    name: str

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any] | None) -> Session:
        cfg = configuration or {}
        raw_dir = str(cfg.get("testbed_run_dir") or "").strip()
        name = str(cfg.get("testbed_name") or DEFAULT_NAME)
        if not _NAME.match(name):
            raise ConfigError(
                f"configuration testbed_name {name!r} must be lower-case letters, digits and '-'"
            )
        return cls(Path(raw_dir) if raw_dir else None, name)

    def stack(self) -> Stack:
        return open_stack(self.run_dir)

    def out_dir(self, stack: Stack) -> Path:
        return stack.run_dir / "chaos" / f"ctk-{self.name}"

    @contextlib.contextmanager
    def journal(self, stack: Stack) -> Iterator[Journal]:
        """The run's journal, locked while the caller reads and changes it."""
        out = self.out_dir(stack)
        out.mkdir(parents=True, exist_ok=True)
        with (out / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                path = out / "journal.json"
                if path.exists():
                    yield read_journal(path)
                else:
                    yield Journal.create(path, experiment={}, source="chaostoolkit")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def new_journal(self, stack: Stack, experiment: dict[str, Any], source: str) -> None:
        """Start this run's journal afresh (the control does, before the experiment)."""
        out = self.out_dir(stack)
        out.mkdir(parents=True, exist_ok=True)
        with (out / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                Journal.create(out / "journal.json", experiment=experiment, source=source)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


async def stack_info(stack: Stack) -> StackInfo:
    return await from_management(stack)


def fault_context(stack: Stack, info: StackInfo, session: aiohttp.ClientSession) -> FaultContext:
    toxiproxy = ToxiproxyClient(info.toxiproxy_url) if info.toxiproxy_url else None
    return FaultContext(info, session, toxiproxy, SupervisorControl(stack.supervisor))
