"""``services.common.db``: a transaction never outlives its block, whatever ends it.

Each case is injected for real: a trace callback stalls aiosqlite's thread on one statement so
the test can cancel the task exactly while that statement runs; a deferred foreign key makes
``COMMIT`` fail (SQLite then keeps the transaction open); a second OS process holds the write
lock past the busy timeout. After each, the connection must be outside a transaction, usable,
and another connection must be able to take the write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite
import pytest

from mesh.errors import ConfigError
from services.common.db import Database, DatabaseUnavailable, DbSettings
from services.common.write_watch import WriteWatch

MIGRATIONS = [
    """
    CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
    CREATE TABLE parent (id INTEGER PRIMARY KEY);
    CREATE TABLE child (
        id INTEGER PRIMARY KEY,
        parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED
    )
    """
]

QUICK = DbSettings(busy_timeout=0.3, open_timeout=1.0)

# Another process takes the write lock (WAL, as the services do) and holds it until its stdin
# closes, as a sibling instance stuck in a transaction would.
HOLDER = (
    "import sqlite3, sys\n"
    "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "c.execute('PRAGMA journal_mode = WAL')\n"
    "c.execute('BEGIN IMMEDIATE')\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


@asynccontextmanager
async def lock_held_by_another_process(path: Path) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == b"held"
        yield
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def can_take_write_lock(path: Path) -> bool:
    """Whether a fresh connection gets the write lock at once (nobody holds it)."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def names(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT name FROM item ORDER BY id")]
    finally:
        conn.close()


async def writer_of(db: Database) -> aiosqlite.Connection:
    async with db.transaction() as conn:
        return conn


def stall_on(prefix: str, seconds: float) -> tuple[Callable[[str], None], threading.Event]:
    """A trace callback that blocks aiosqlite's thread ``seconds`` as ``prefix`` starts."""
    started = threading.Event()

    def callback(sql: str) -> None:
        if sql.strip().upper().startswith(prefix):
            started.set()
            time.sleep(seconds)

    return callback, started


async def eventually(condition: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    for _ in range(int(within / 0.05) + 1):
        if condition():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {within} s")


def no_trace(sql: str) -> None:
    """The trace callback once the stall is no longer wanted."""


async def assert_clean(db: Database, conn: aiosqlite.Connection) -> None:
    """Outside a transaction, the lock free for others, and writes work again."""
    assert not conn.in_transaction
    assert await asyncio.to_thread(can_take_write_lock, db.path)
    async with db.transaction() as again:
        await again.execute("INSERT INTO item (name) VALUES ('after')")
    assert "after" in names(db.path)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "t.sqlite3", MIGRATIONS, settings=QUICK)
    try:
        yield database
    finally:
        await database.close()


async def cancel_when(started: threading.Event, task: asyncio.Task[None]) -> None:
    assert await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_during_begin_leaves_no_transaction(db: Database) -> None:
    conn = await writer_of(db)
    callback, started = stall_on("BEGIN", 0.3)
    await conn.set_trace_callback(callback)

    async def write() -> None:
        async with db.transaction() as c:
            await c.execute("INSERT INTO item (name) VALUES ('lost')")

    await cancel_when(started, asyncio.create_task(write()))
    await conn.set_trace_callback(no_trace)
    await assert_clean(db, conn)
    assert "lost" not in names(db.path)


async def test_cancelled_during_body_statement_rolls_back_after_it(db: Database) -> None:
    conn = await writer_of(db)
    callback, started = stall_on("INSERT", 0.3)
    await conn.set_trace_callback(callback)

    async def write() -> None:
        async with db.transaction() as c:
            await c.execute("INSERT INTO item (name) VALUES ('half')")

    await cancel_when(started, asyncio.create_task(write()))
    await conn.set_trace_callback(no_trace)
    await assert_clean(db, conn)
    assert "half" not in names(db.path)


async def test_cancelled_while_body_awaits_something_else(db: Database) -> None:
    conn = await writer_of(db)
    inside = asyncio.Event()

    async def write() -> None:
        async with db.transaction() as c:
            await c.execute("INSERT INTO item (name) VALUES ('idle')")
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(write())
    await asyncio.wait_for(inside.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_clean(db, conn)
    assert "idle" not in names(db.path)


async def test_cancelled_during_commit_finishes_it_then_cancels(db: Database) -> None:
    conn = await writer_of(db)
    callback, started = stall_on("COMMIT", 0.3)
    await conn.set_trace_callback(callback)

    async def write() -> None:
        async with db.transaction() as c:
            await c.execute("INSERT INTO item (name) VALUES ('kept')")

    await cancel_when(started, asyncio.create_task(write()))
    await conn.set_trace_callback(no_trace)
    await assert_clean(db, conn)
    assert "kept" in names(db.path)  # COMMIT was running: it was awaited, not abandoned


async def test_failing_commit_is_rolled_back(db: Database) -> None:
    conn = await writer_of(db)

    async def write() -> None:
        async with db.transaction() as c:
            await c.execute("INSERT INTO item (name) VALUES ('orphan')")
            await c.execute("INSERT INTO child (parent) VALUES (99)")  # checked at COMMIT

    with pytest.raises(sqlite3.IntegrityError):
        await write()
    await assert_clean(db, conn)
    assert "orphan" not in names(db.path)


async def test_begin_busy_past_the_busy_timeout(db: Database) -> None:
    conn = await writer_of(db)
    async with lock_held_by_another_process(db.path):
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await db.probe_write()
        assert not conn.in_transaction
        assert "locked" in db.last_write_error
    await assert_clean(db, conn)


async def test_deadline_expiring_while_begin_waits_on_another_process(db: Database) -> None:
    conn = await writer_of(db)
    async with lock_held_by_another_process(db.path):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05), db.transaction() as c:
                await c.execute("INSERT INTO item (name) VALUES ('late')")
        assert not conn.in_transaction
    await assert_clean(db, conn)
    assert "late" not in names(db.path)


async def test_snapshot_cancelled_ends_its_read_transaction(db: Database) -> None:
    inside = asyncio.Event()
    readers: list[aiosqlite.Connection] = []

    async def read() -> None:
        async with db.snapshot() as c:
            readers.append(c)
            await c.execute("SELECT count(*) FROM item")
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(read())
    await asyncio.wait_for(inside.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not readers[0].in_transaction
    async with db.snapshot() as c, c.execute("SELECT count(*) FROM item") as cur:
        assert (await cur.fetchone()) is not None


async def test_open_retries_then_fails_cleanly_on_a_held_lock(tmp_path: Path) -> None:
    path = tmp_path / "held.sqlite3"
    async with lock_held_by_another_process(path):
        with pytest.raises(DatabaseUnavailable) as info:
            await Database.open(path, MIGRATIONS, settings=QUICK)
    message = str(info.value)
    assert str(path) in message
    assert "TESTBED_DB_OPEN_TIMEOUT_S" in message


async def test_open_waits_for_a_lock_released_within_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "brief.sqlite3"
    settings = DbSettings(busy_timeout=0.1, open_timeout=20.0)
    async with lock_held_by_another_process(path):
        opening = asyncio.create_task(Database.open(path, MIGRATIONS, settings=settings))
        await asyncio.sleep(0.5)
        assert not opening.done()
    db = await opening
    try:
        await assert_clean(db, await writer_of(db))
    finally:
        await db.close()


async def test_schema_newer_than_the_code_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    db = await Database.open(path, [*MIGRATIONS, "CREATE TABLE extra (id INTEGER)"])
    await db.close()
    with pytest.raises(DatabaseUnavailable, match="newer than this code"):
        await Database.open(path, MIGRATIONS)


async def test_write_watch_reports_a_held_lock_then_gives_up(tmp_path: Path) -> None:
    settings = DbSettings(busy_timeout=0.2, probe_interval=0.1, stall_after=0.5, exit_after=1.5)
    db = await Database.open(tmp_path / "w.sqlite3", MIGRATIONS, settings=settings)
    wedged: list[str] = []
    watch = WriteWatch(db, on_wedged=wedged.append)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0.3)
        assert watch.problem() is None
        async with lock_held_by_another_process(db.path):
            await eventually(lambda: watch.problem() is not None)
            problem = watch.problem()
            assert problem is not None
            assert str(db.path) in problem
            assert "locked" in problem or "waiting" in problem
            await asyncio.wait_for(task, 20)  # returns once it called on_wedged
        assert len(wedged) == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await db.close()


async def test_write_watch_recovers_when_the_lock_is_released(tmp_path: Path) -> None:
    settings = DbSettings(busy_timeout=0.2, probe_interval=0.1, stall_after=0.5, exit_after=60)
    db = await Database.open(tmp_path / "r.sqlite3", MIGRATIONS, settings=settings)
    watch = WriteWatch(db, on_wedged=lambda reason: None)
    task = asyncio.create_task(watch.run())
    try:
        async with lock_held_by_another_process(db.path):
            await eventually(lambda: watch.problem() is not None)
        await eventually(lambda: watch.problem() is None)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await db.close()


async def test_a_connection_found_inside_a_transaction_is_brought_back(db: Database) -> None:
    """The issue's symptom: something left the writer inside a transaction (here a BEGIN sent
    around ``Database``); the next block rolls it back instead of failing for ever."""
    conn = await writer_of(db)
    await conn.execute("BEGIN IMMEDIATE")
    await conn.execute("INSERT INTO item (name) VALUES ('stray')")
    assert conn.in_transaction
    async with db.transaction() as c:
        await c.execute("INSERT INTO item (name) VALUES ('next')")
    assert names(db.path) == ["next"]
    await assert_clean(db, conn)


async def test_write_watch_sees_a_write_path_hung_in_this_process(tmp_path: Path) -> None:
    settings = DbSettings(busy_timeout=0.2, probe_interval=0.1, stall_after=0.4, exit_after=1.0)
    db = await Database.open(tmp_path / "h.sqlite3", MIGRATIONS, settings=settings)
    conn = await writer_of(db)
    callback, started = stall_on("BEGIN", 2.0)  # aiosqlite's thread stuck in one statement
    wedged: list[str] = []
    watch = WriteWatch(db, on_wedged=wedged.append)
    await conn.set_trace_callback(callback)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(task, 20)  # returns once it called on_wedged, probe still hung
        assert started.is_set()
        assert len(wedged) == 1
        assert "waiting for the write lock" in wedged[0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await conn.set_trace_callback(no_trace)
        await db.close()


async def test_a_writer_that_cannot_roll_back_is_replaced(db: Database) -> None:
    """A connection that cannot answer (closed under ``Database``'s feet: ROLLBACK fails too)
    is closed and replaced by a fresh one, instead of failing every write after it."""
    conn = await writer_of(db)
    await conn.close()
    async with db.transaction() as fresh:
        await fresh.execute("INSERT INTO item (name) VALUES ('fresh')")
    assert fresh is not conn
    await assert_clean(db, fresh)
    assert "fresh" in names(db.path)


def test_settings_from_the_environment() -> None:
    settings = DbSettings.from_env(
        {
            "TESTBED_DB_BUSY_TIMEOUT_MS": "250",
            "TESTBED_DB_STALL_S": "2",
            "TESTBED_DB_WEDGED_EXIT_S": "9",
        }
    )
    assert (settings.busy_timeout, settings.stall_after, settings.exit_after) == (0.25, 2, 9)
    with pytest.raises(ConfigError, match="TESTBED_DB_WEDGED_EXIT_S"):
        DbSettings.from_env({"TESTBED_DB_STALL_S": "30"})
    with pytest.raises(ConfigError, match="TESTBED_DB_BUSY_TIMEOUT_MS"):
        DbSettings.from_env({"TESTBED_DB_BUSY_TIMEOUT_MS": "soon"})
