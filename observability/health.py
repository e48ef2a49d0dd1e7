"""Health: ``/healthz`` (alive) and ``/readyz`` (wants traffic), plus in-flight tracking.

Both stay truthful while faults are injected (the fault middleware never touches them).
Readiness is an object components flip (``app[READINESS_KEY].ready = False`` until a database
is open, say); shutdown sets ``draining`` first, which fails ``/readyz`` whatever ``ready`` says,
then waits for ``InFlight`` to reach zero.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from observability.keys import READINESS_KEY

__all__ = ["InFlight", "Readiness", "healthz", "readyz"]


class Readiness:
    """Whether the process wants traffic: ``ready`` and not ``draining``."""

    def __init__(self, *, ready: bool = True) -> None:
        self._ready = ready
        self.draining = False

    @property
    def ready(self) -> bool:
        return self._ready and not self.draining

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = value

    @property
    def reason(self) -> str:
        if self.draining:
            return "draining"
        return "ready" if self._ready else "starting"


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
    """Ready for traffic: 200, or 503 while starting or draining."""
    readiness = request.app[READINESS_KEY]
    status = 200 if readiness.ready else 503
    return web.json_response({"status": readiness.reason}, status=status)
