"""One service's SQLite database: WAL, busy timeout, migrations, and transactions that never mix
and never outlive their block.

aiosqlite runs each connection on its own thread, so the event loop never waits on the disk. One
connection is shared by every coroutine of the process, which means two coroutines could
interleave their statements inside one transaction; ``Database`` prevents that with a lock per
connection. Writes go through one connection (``BEGIN IMMEDIATE``, so writers of other
instances of the same service wait on the busy timeout instead of failing), reads through a
second one, so a long read (an audit snapshot) never holds up a write. Each ``snapshot()`` is one
read transaction, which in WAL mode is a consistent view of the whole database.

This module is the one place that begins and ends transactions (``_transaction``). Whatever
ends a block -- its body returning or raising, ``BEGIN`` or ``COMMIT`` failing (busy, I/O
error, a deferred constraint), the task being cancelled at any await (a deadline expiring is a
cancellation too) -- the connection leaves the block outside a transaction, so it holds no lock
another instance needs. Cancellation never abandons a statement still running in aiosqlite's
thread: ``BEGIN`` and ``COMMIT`` are shielded and awaited to their end, the rollback is queued
behind whatever the body left running (aiosqlite runs a connection's statements in order), and
only then is the ``CancelledError`` raised again. If even ``ROLLBACK`` fails, the connection is
closed (SQLite releases everything a closed connection held) and a fresh one replaces it.

Opening retries a busy database (several instances migrating the same file at once) with
backoff for ``open_timeout`` seconds, then raises ``DatabaseUnavailable`` naming the file.

Migrations are a list of SQL scripts applied in order; ``PRAGMA user_version`` records how many
ran. There is no migration library for aiosqlite that earns its weight here.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiosqlite

from mesh.errors import ConfigError, TestbedError
from mesh.process import env_float
from observability.logs import get_logger

T = TypeVar("T")

_log = get_logger("services.db")

_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


@dataclass(frozen=True, kw_only=True)
class DbSettings:
    """How long to wait on a busy database, and when a stuck write path is reported and fatal.

    ``TESTBED_DB_BUSY_TIMEOUT_MS``   how long one statement waits for another instance's lock
                                     (default 5000)
    ``TESTBED_DB_OPEN_TIMEOUT_S``    start-up retry budget on a busy database (default 30)
    ``TESTBED_DB_PROBE_INTERVAL_S``  how often an idle instance proves it can write (default 1)
    ``TESTBED_DB_STALL_S``           no write for this long while one is wanted: not ready
                                     (default 3)
    ``TESTBED_DB_WEDGED_EXIT_S``     still stuck after this long: the process exits so its
                                     supervisor restarts it (default 25)
    """

    busy_timeout: float = 5.0
    open_timeout: float = 30.0
    probe_interval: float = 1.0
    stall_after: float = 3.0
    exit_after: float = 25.0

    def __post_init__(self) -> None:
        if self.exit_after <= self.stall_after:
            raise ConfigError(
                f"TESTBED_DB_WEDGED_EXIT_S={self.exit_after:g} must be above "
                f"TESTBED_DB_STALL_S={self.stall_after:g} (report not ready first, exit later)"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DbSettings:
        return cls(
            busy_timeout=env_float(
                env, "TESTBED_DB_BUSY_TIMEOUT_MS", 5000.0, minimum=0, maximum=600_000
            )
            / 1000,
            open_timeout=env_float(env, "TESTBED_DB_OPEN_TIMEOUT_S", 30.0, minimum=0),
            probe_interval=env_float(env, "TESTBED_DB_PROBE_INTERVAL_S", 1.0, minimum=0.05),
            stall_after=env_float(env, "TESTBED_DB_STALL_S", 3.0, minimum=0.1),
            exit_after=env_float(env, "TESTBED_DB_WEDGED_EXIT_S", 25.0, minimum=0.1),
        )


class DatabaseUnavailable(TestbedError):
    """The database could not be opened within the start-up retry budget."""


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying another connection holds the lock it needs."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _BUSY_CODES
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


async def _connect(path: Path, busy_timeout: float) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
    try:
        conn.row_factory = aiosqlite.Row
        await conn.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        await _settle(conn.close())
        raise
    return conn


async def _settle(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile, then let the
    cancellation through. A statement handed to aiosqlite runs in its thread whatever the
    caller does; this makes the caller wait for it, so the connection's state is known."""
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            while not task.done():
                try:
                    await asyncio.wait([task])
                except asyncio.CancelledError:
                    continue
            if not task.cancelled():
                task.exception()  # retrieved: the caller's cancellation is what it sees
        raise


def _inside(conn: aiosqlite.Connection) -> bool:
    """Whether ``conn`` is inside a transaction; a connection that cannot say counts as inside
    (it will be replaced)."""
    try:
        return bool(conn.in_transaction)
    except (ValueError, sqlite3.Error):
        return True


async def _execute(conn: aiosqlite.Connection, sql: str) -> None:
    cursor = await conn.execute(sql)
    await cursor.close()


class _Slot:
    """A connection behind a lock, replaced by a fresh one when it cannot be brought back
    outside a transaction."""

    def __init__(self, path: Path, conn: aiosqlite.Connection, busy_timeout: float, role: str):
        self.path = path
        self.conn: aiosqlite.Connection | None = conn
        self.busy_timeout = busy_timeout
        self.role = role
        self.lock = asyncio.Lock()

    async def get(self) -> aiosqlite.Connection:
        if self.conn is None:
            self.conn = await _connect(self.path, self.busy_timeout)
        elif _inside(self.conn):  # never expected: _end leaves none behind
            _log.error("database_left_in_transaction", path=str(self.path), role=self.role)
            await self._end()
            if self.conn is None:
                self.conn = await _connect(self.path, self.busy_timeout)
        return self.conn

    @asynccontextmanager
    async def transaction(self, begin: str) -> AsyncIterator[aiosqlite.Connection]:
        """The one place a transaction begins and ends (see the module's docstring)."""
        async with self.lock:
            conn = await _settle(self.get())
            try:
                await _settle(_execute(conn, begin))
                yield conn
                await _settle(_execute(conn, "COMMIT"))
            except BaseException:
                await _settle(self._end())
                raise

    async def _end(self) -> None:
        """Leave the connection outside a transaction: roll back, or else close it."""
        conn = self.conn
        if conn is None:
            return
        try:
            if _inside(conn):
                await _execute(conn, "ROLLBACK")
        except Exception as exc:  # re-checked below: SQLite may have rolled back by itself
            _log.warning("database_rollback_failed", path=str(self.path), error=str(exc))
        if _inside(conn):
            _log.error("database_connection_replaced", path=str(self.path), role=self.role)
            self.conn = None
            try:
                await conn.close()  # a closed connection holds no lock
            except Exception as exc:
                _log.error("database_close_failed", path=str(self.path), error=str(exc))

    async def close(self) -> None:
        async with self.lock:
            if self.conn is not None:
                conn, self.conn = self.conn, None
                await conn.close()


class Database:
    """A service's database: a write connection and a read connection, each behind a lock."""

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        settings: DbSettings | None = None,
    ):
        self.path = path
        self.settings = settings or DbSettings()
        self._writer = _Slot(path, writer, self.settings.busy_timeout, "writer")
        self._reader = _Slot(path, reader, self.settings.busy_timeout, "reader")
        self.last_write_ok = time.monotonic()
        self.last_write_error = ""
        self._close_hooks: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    async def open(
        cls, path: Path, migrations: Sequence[str], *, settings: DbSettings | None = None
    ) -> Database:
        """Open (creating the folder and file if needed), switch to WAL, apply migrations;
        retry while another instance holds the lock, up to ``settings.open_timeout``."""
        settings = settings or DbSettings()
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + settings.open_timeout
        delay = 0.05
        attempt = 1
        while True:
            try:
                return await cls._open_once(path, migrations, settings)
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise DatabaseUnavailable(
                        f"cannot open database {path}: {exc}; check the file and its folder "
                        "(permissions, free space), or delete it to start from an empty one"
                    ) from None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DatabaseUnavailable(
                        f"database {path} stayed locked by another process for "
                        f"{settings.open_timeout:g} s ({exc}); find the process holding it "
                        f"(fuser {path}) and stop it, or raise TESTBED_DB_OPEN_TIMEOUT_S"
                    ) from None
                pause = min(delay * (0.5 + random.random()), left)  # jitter
                _log.warning(
                    "database_busy_retry",
                    path=str(path),
                    attempt=attempt,
                    retry_in_s=round(pause, 3),
                    budget_left_s=round(left, 1),
                    error=str(exc),
                )
                await asyncio.sleep(pause)
                delay = min(delay * 2, 2.0)
                attempt += 1

    @classmethod
    async def _open_once(
        cls, path: Path, migrations: Sequence[str], settings: DbSettings
    ) -> Database:
        writer = await _connect(path, settings.busy_timeout)
        try:
            await _settle(_execute(writer, "PRAGMA journal_mode = WAL"))
            slot = _Slot(path, writer, settings.busy_timeout, "migration")
            await _migrate(slot, migrations)
            reader = await _connect(path, settings.busy_timeout)
        except BaseException:
            await _settle(writer.close())
            raise
        return cls(path, writer, reader, settings)

    def on_close(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` first when the database closes (a watch of it stops, say)."""
        self._close_hooks.append(hook)

    async def close(self) -> None:
        for hook in reversed(self._close_hooks):
            await hook()
        self._close_hooks.clear()
        await self._writer.close()
        await self._reader.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises (or is
        cancelled, or ``COMMIT`` fails); the connection never stays inside it."""
        try:
            async with self._writer.transaction("BEGIN IMMEDIATE") as conn:
                yield conn
        except sqlite3.Error as exc:
            self.last_write_error = str(exc)
            raise
        self.last_write_ok = time.monotonic()
        self.last_write_error = ""

    async def probe_write(self) -> None:
        """Take the write lock and let it go (an empty write transaction): proof that this
        instance can write right now."""
        async with self.transaction():
            pass

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[aiosqlite.Connection]:
        """A read transaction: every query in the block sees the same committed state."""
        async with self._reader.transaction("BEGIN") as conn:
            yield conn


async def _migrate(slot: _Slot, migrations: Sequence[str]) -> None:
    """Apply the migrations this database has not seen yet, in one transaction."""
    async with slot.transaction("BEGIN IMMEDIATE") as conn:
        async with conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        done = int(row[0]) if row is not None else 0
        if done > len(migrations):
            raise DatabaseUnavailable(
                f"database {slot.path} has schema version {done}, newer than this code knows "
                f"({len(migrations)}); run the matching version of the code or delete the file"
            )
        for index in range(done, len(migrations)):
            for statement in _statements(migrations[index]):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {index + 1}")


def _statements(script: str) -> list[str]:
    """Split a migration script on ';' (our scripts hold no ';' inside strings or triggers)."""
    return [s.strip() for s in script.split(";") if s.strip()]
