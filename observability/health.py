"""Health: ``/healthz`` (alive) and ``/readyz`` (wants traffic), plus in-flight tracking.

Both stay truthful while faults are injected (the fault middleware never touches them).
Readiness is an object components flip (``app[READINESS_KEY].ready = False`` until a database
is open, say); shutdown sets ``draining`` first, which fails ``/readyz`` whatever ``ready`` says,
then waits for ``InFlight`` to reach zero. Components may also add checks, asked on every
``/readyz``: a check returns ``None`` when all is well, else the reason the process cannot serve
(a database that cannot be written, say), which ``/readyz`` answers with a 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from observability.keys import READINESS_KEY

__all__ = ["InFlight", "Readiness", "healthz", "readyz"]


class Readiness:
    """Whether the process wants traffic: ``ready`` and not ``draining``."""

    def __init__(self, *, ready: bool = True) -> None:
        self._ready = ready
        self.draining = False
        self._checks: dict[str, Callable[[], str | None]] = {}

    def add_check(self, name: str, check: Callable[[], str | None]) -> None:
        """Ask ``check()`` on every readiness question: ``None`` is fine, a string is why not."""
        self._checks[name] = check

    def remove_check(self, name: str) -> None:
        self._checks.pop(name, None)

    def problem(self) -> str | None:
        """The first failing check's reason, as ``"<name>: <reason>"``."""
        for name, check in self._checks.items():
            reason = check()
            if reason is not None:
                return f"{name}: {reason}"
        return None

    @property
    def ready(self) -> bool:
        return self._ready and not self.draining and self.problem() is None

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = value

    @property
    def starting(self) -> bool:
        return not self._ready

    @property
    def reason(self) -> str:
        if self.draining:
            return "draining"
        if not self._ready:
            return "starting"
        return "ready" if self.problem() is None else "unavailable"


class InFlight:
    """Counts requests being handled; ``wait_idle`` returns when none are left. Every request
    moves the count; only a waiter makes an event (so counting costs two integer updates)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.count = 0
            if self._idle is not None:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is in flight (wrap in ``asyncio.timeout`` to bound it)."""
        while self.count > 0:
            if self._idle is None or self._idle.is_set():
                self._idle = asyncio.Event()
            await self._idle.wait()


async def healthz(request: web.Request) -> web.Response:
    """Alive: answers as long as the event loop runs."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic: 200, or 503 while starting, draining or when a check fails (then
    ``reason`` says why)."""
    readiness = request.app[READINESS_KEY]
    if readiness.draining or readiness.starting:
        return web.json_response({"status": readiness.reason}, status=503)
    problem = readiness.problem()
    if problem is not None:
        return web.json_response({"status": "unavailable", "reason": problem}, status=503)
    return web.json_response({"status": "ready"})
