"""One service's SQLite database: WAL, busy timeout, migrations, and transactions that never mix.

aiosqlite runs each connection on its own thread, so the event loop never waits on the disk. One
connection is shared by every coroutine of the process, which means two coroutines could
interleave their statements inside one transaction; ``Database`` prevents that with a lock per
connection. Writes go through one connection (``BEGIN IMMEDIATE``, so writers of other
instances of the same service wait on the busy timeout instead of failing), reads through a
second one, so a long read (an audit snapshot) never holds up a write. Each ``snapshot()`` is one
read transaction, which in WAL mode is a consistent view of the whole database.

Migrations are a list of SQL scripts applied in order; ``PRAGMA user_version`` records how many
ran. There is no migration library for aiosqlite that earns its weight here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import aiosqlite

T = TypeVar("T")
BUSY_TIMEOUT_MS = 10_000


async def _to_the_end(call: Awaitable[T]) -> T:
    """Await an aiosqlite call until its SQL has run, even if the caller is cancelled meanwhile.

    aiosqlite runs the statement on its own thread whatever happens to the awaiting task, so a
    cancelled ``await conn.execute("BEGIN")`` still begins a transaction; the caller must know
    it did before it can end it. The cancellation is raised once the statement is over.
    """
    task = asyncio.ensure_future(call)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


async def _end_transaction(conn: aiosqlite.Connection) -> None:
    """Roll back whatever transaction ``conn`` is in (none: nothing to do); never raises."""
    with contextlib.suppress(Exception):
        if conn.in_transaction:
            await _to_the_end(conn.execute("ROLLBACK"))


async def _connect(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = aiosqlite.Row
    await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA foreign_keys = ON")
    await conn.execute("PRAGMA synchronous = NORMAL")
    return conn


class Database:
    """A service's database: a write connection and a read connection, each behind a lock."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[str]) -> Database:
        """Open (creating the folder and file if needed), switch to WAL, apply migrations."""
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path)
        try:
            await writer.execute("PRAGMA journal_mode = WAL")
            await _migrate(writer, migrations)
            reader = await _connect(path)
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader)

    async def close(self) -> None:
        async with self._write_lock, self._read_lock:
            await self._reader.close()
            await self._writer.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        async with self._write_lock:
            try:
                await _to_the_end(self._writer.execute("BEGIN IMMEDIATE"))
                yield self._writer
                await _to_the_end(self._writer.execute("COMMIT"))
            finally:
                # BEGIN or the body or COMMIT failed or was cancelled: never leave the write
                # lock held (the statement under way ends first: aiosqlite runs them in order)
                await _to_the_end(_end_transaction(self._writer))

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[aiosqlite.Connection]:
        """A read transaction: every query in the block sees the same committed state."""
        async with self._read_lock:
            try:
                await _to_the_end(self._reader.execute("BEGIN"))
                yield self._reader
            finally:
                await _to_the_end(_end_transaction(self._reader))


async def _migrate(conn: aiosqlite.Connection, migrations: Sequence[str]) -> None:
    """Apply the migrations this database has not seen yet, each in its own transaction."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        async with conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        done = int(row[0]) if row is not None else 0
        if done > len(migrations):
            raise RuntimeError(
                f"database schema version {done} is newer than this code knows ({len(migrations)})"
            )
        for index in range(done, len(migrations)):
            for statement in _statements(migrations[index]):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {index + 1}")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """Split a migration script on ';' (our scripts hold no ';' inside strings or triggers)."""
    return [s.strip() for s in script.split(";") if s.strip()]
