"""``Database.transaction`` never leaves the write connection inside a transaction: cancelled
during BEGIN, during the body or during COMMIT, the next transaction still works."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.common.db import Database

SCHEMA = ("CREATE TABLE t (v INTEGER)",)


async def _insert(db: Database, value: int, *, hold: float = 0.0) -> None:
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
        if hold:
            await asyncio.sleep(hold)


async def _count(db: Database) -> int:
    async with db.snapshot() as conn, conn.execute("SELECT count(*) FROM t") as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("after", [0.0, 0.0005, 0.001, 0.002, 0.005])
async def test_cancelled_transactions_leave_the_connection_usable(
    tmp_path: Path, after: float
) -> None:
    db = await Database.open(tmp_path / "x.sqlite3", SCHEMA)
    try:
        for i in range(30):
            task = asyncio.create_task(_insert(db, i, hold=0.01 if i % 2 else 0.0))
            await asyncio.sleep(after * (i % 5))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert not db._writer.in_transaction
        await _insert(db, 99)
        assert await _count(db) >= 1
    finally:
        await db.close()


async def test_a_failed_commit_is_rolled_back(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "x.sqlite3", SCHEMA)
    try:

        async def failing() -> None:
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO t (v) VALUES (1)")
                raise RuntimeError("body failed")

        with pytest.raises(RuntimeError):
            await failing()
        assert not db._writer.in_transaction
        await _insert(db, 2)
        assert await _count(db) == 1
    finally:
        await db.close()
