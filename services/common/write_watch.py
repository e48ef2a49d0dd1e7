"""Health that tells the truth about a service's database: can this instance write right now?

``WriteWatch`` takes the write lock and lets it go (``Database.probe_write``) every
``probe_interval`` seconds, in a task of its own so a probe that hangs cannot hang the watch.
Any committed transaction, probe or real, counts as proof. With no proof for ``stall_after``
seconds (another process holds the lock, the connection is broken, the disk stalls), ``problem``
returns the reason and ``/readyz`` answers 503 with it; with none for ``exit_after`` seconds the
process is wedged for good and exits, so its supervisor starts a fresh one (a fresh process has
fresh connections, and its exit releases every lock it held).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from observability.keys import READINESS_KEY
from observability.logs import get_logger
from services.common.db import Database, DbSettings

_log = get_logger("services.write_watch")

EXIT_WEDGED = 75
"""Exit status of a process whose write path stayed wedged (EX_TEMPFAIL: try again)."""


def exit_wedged(reason: str) -> None:
    """Leave now, without the graceful shutdown a wedged database could hang."""
    _log.critical("database_wedged_exit", reason=reason, exit_code=EXIT_WEDGED)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(EXIT_WEDGED)


class WriteWatch:
    """Proves, every ``probe_interval``, that the database can be written; see the module."""

    def __init__(self, db: Database, *, on_wedged: Callable[[str], None] = exit_wedged) -> None:
        self.db = db
        self.settings: DbSettings = db.settings
        self._on_wedged = on_wedged
        self._failing = False

    def stalled_for(self) -> float:
        return time.monotonic() - self.db.last_write_ok

    def problem(self) -> str | None:
        """``None`` while writes succeed, else why this instance cannot take traffic."""
        stalled = self.stalled_for()
        if stalled < self.settings.stall_after:
            return None
        why = self.db.last_write_error or "still waiting for the write lock"
        return f"no write succeeded for {stalled:.1f} s ({why}); database {self.db.path}"

    async def run(self) -> None:
        interval = self.settings.probe_interval
        probe: asyncio.Task[None] | None = None
        try:
            while True:
                started = time.monotonic()
                if probe is None:
                    probe = asyncio.create_task(self.db.probe_write(), name="database-probe")
                done, _ = await asyncio.wait({probe}, timeout=interval)
                if probe in done:
                    self._collect(probe)
                    probe = None
                problem = self.problem()
                if problem is not None and self.stalled_for() >= self.settings.exit_after:
                    self._on_wedged(problem)
                    return
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        finally:
            if probe is not None:
                probe.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(probe, self.settings.busy_timeout + 1.0)

    def _collect(self, probe: asyncio.Task[None]) -> None:
        error = probe.exception()
        if error is None:
            if self._failing:
                _log.info("database_writable_again", path=str(self.db.path))
            self._failing = False
        elif not self._failing:  # one line when it starts failing, not one per probe
            self._failing = True
            _log.warning("database_write_probe_failed", path=str(self.db.path), error=str(error))


async def open_database(
    app: web.Application,
    path: Path,
    migrations: Sequence[str],
    settings: DbSettings,
    *,
    on_wedged: Callable[[str], None] = exit_wedged,
) -> Database:
    """Open the database (retrying while busy) and watch its write path until it is closed:
    ``/readyz`` fails while it is stuck, the process exits when it stays stuck."""
    db = await Database.open(path, migrations, settings=settings)
    watch = WriteWatch(db, on_wedged=on_wedged)
    readiness = app[READINESS_KEY]
    task = asyncio.create_task(watch.run(), name="database-write-watch")
    readiness.add_check("database", watch.problem)

    async def stop() -> None:
        readiness.remove_check("database")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    db.on_close(stop)
    return db
