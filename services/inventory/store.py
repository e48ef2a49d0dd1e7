"""Inventory's own database: stock counters per product and reservations, and every mutation.

Stock is kept as four counters per product with ``initial = available + reserved + committed``;
each mutation moves units between counters and changes the reservation's state in the same
transaction, so the audit can check the counters against the reservations.

In ``saga`` mode a reservation is identified by its order id: a repeated Reserve answers the
reservation already made (or refuses a different body), Release and Commit are idempotent, and
a Release for an order with no reservation leaves a released tombstone so a Reserve that arrives
late (after the saga already compensated) is refused. In ``naive`` mode every Reserve adds a new
reservation, and Release/Commit act on all held reservations of the order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import aiosqlite

from services.common.consistency import Consistency
from services.common.db import Database
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.hashing import fingerprint
from services.common.seed import seed_products
from services.inventory.api import (
    Availability,
    InventoryAudit,
    Item,
    Reservation,
    ReservationState,
    StockRow,
)

MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE stock (
        product_id TEXT PRIMARY KEY,
        initial    INTEGER NOT NULL CHECK (initial >= 0),
        available  INTEGER NOT NULL CHECK (available >= 0),
        reserved   INTEGER NOT NULL CHECK (reserved >= 0),
        committed  INTEGER NOT NULL CHECK (committed >= 0)
    );
    CREATE TABLE reservations (
        reservation_id INTEGER PRIMARY KEY AUTOINCREMENT,
        order_id       TEXT NOT NULL,
        state          TEXT NOT NULL,
        items          TEXT NOT NULL,   -- JSON list of {product_id, quantity}
        request_hash   TEXT,            -- NULL for a tombstone
        reason         TEXT NOT NULL DEFAULT '',
        expires_at     REAL NOT NULL,
        created_at     REAL NOT NULL,
        updated_at     REAL NOT NULL
    );
    CREATE INDEX reservations_by_order ON reservations (order_id);
    CREATE INDEX reservations_by_expiry ON reservations (state, expires_at);
    """,
)


def _reservation(row: aiosqlite.Row) -> Reservation:
    return Reservation(
        reservation_id=row["reservation_id"],
        order_id=row["order_id"],
        state=ReservationState(row["state"]),
        items=[Item.model_validate(i) for i in json.loads(row["items"])],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        reason=row["reason"],
    )


async def _rows(
    conn: aiosqlite.Connection, query: str, args: Sequence[object] = ()
) -> list[aiosqlite.Row]:
    async with conn.execute(query, args) as cur:
        return list(await cur.fetchall())


def _items_hash(items: Sequence[Item]) -> str:
    return fingerprint(sorted((i.product_id, i.quantity) for i in items))


class InventoryStore:
    """Typed queries and mutations over inventory's database."""

    def __init__(self, db: Database, *, consistency: Consistency) -> None:
        self.db = db
        self.consistency = consistency

    @classmethod
    async def open(
        cls, db: Database, *, consistency: Consistency, seed_count: int
    ) -> InventoryStore:
        store = cls(db, consistency=consistency)
        await store.seed(seed_count)
        return store

    async def seed(self, count: int) -> int:
        """Give every reference product its initial stock if the table is empty."""
        async with self.db.transaction() as conn:
            rows = await _rows(conn, "SELECT COUNT(*) FROM stock")
            if rows[0][0] > 0:
                return 0
            products = seed_products(count)
            await conn.executemany(
                "INSERT INTO stock (product_id, initial, available, reserved, committed)"
                " VALUES (?, ?, ?, 0, 0)",
                [(p.product_id, p.initial_stock, p.initial_stock) for p in products],
            )
            return len(products)

    async def availability(self, product_ids: Sequence[str]) -> list[Availability]:
        async with self.db.snapshot() as conn:
            marks = ",".join("?" * len(product_ids))
            rows = await _rows(
                conn,
                f"SELECT product_id, available FROM stock WHERE product_id IN ({marks})",
                product_ids,
            )
        found = {r["product_id"]: r["available"] for r in rows}
        unknown = [p for p in product_ids if p not in found]
        if unknown:
            raise InvalidArgument(f"unknown product(s): {', '.join(unknown)}")
        return [Availability(product_id=p, available=found[p]) for p in product_ids]

    async def reserve(
        self, order_id: str, items: Sequence[Item], *, ttl_seconds: float, now: float | None = None
    ) -> Reservation:
        now = time.time() if now is None else now
        request_hash = _items_hash(items)
        async with self.db.transaction() as conn:
            if self.consistency is Consistency.SAGA:
                existing = await _rows(
                    conn, "SELECT * FROM reservations WHERE order_id = ?", (order_id,)
                )
                if existing:
                    row = existing[0]
                    if row["request_hash"] is None:
                        raise FailedPrecondition(
                            f"order {order_id} was already released"
                            f" ({row['reason'] or 'compensated'}); place a new order instead"
                        )
                    if row["request_hash"] != request_hash:
                        raise InvalidArgument(
                            f"order {order_id} already holds a reservation for different items;"
                            " use a new order id for a different reservation"
                        )
                    return _reservation(row)
            ids = [i.product_id for i in items]
            marks = ",".join("?" * len(ids))
            stock = {
                r["product_id"]: r["available"]
                for r in await _rows(
                    conn,
                    f"SELECT product_id, available FROM stock WHERE product_id IN ({marks})",
                    ids,
                )
            }
            unknown = [p for p in ids if p not in stock]
            if unknown:
                raise InvalidArgument(f"unknown product(s): {', '.join(unknown)}")
            short = [i for i in items if stock[i.product_id] < i.quantity]
            if short:
                raise FailedPrecondition(
                    "insufficient stock: "
                    + ", ".join(
                        f"{i.product_id} (requested {i.quantity}, available {stock[i.product_id]})"
                        for i in short
                    )
                )
            await conn.executemany(
                "UPDATE stock SET available = available - ?, reserved = reserved + ?"
                " WHERE product_id = ?",
                [(i.quantity, i.quantity, i.product_id) for i in items],
            )
            cur = await conn.execute(
                "INSERT INTO reservations (order_id, state, items, request_hash, expires_at,"
                " created_at, updated_at) VALUES (?, 'held', ?, ?, ?, ?, ?)",
                (
                    order_id,
                    json.dumps([i.model_dump() for i in items]),
                    request_hash,
                    now + ttl_seconds,
                    now,
                    now,
                ),
            )
            reservation_id = cur.lastrowid
            rows = await _rows(
                conn, "SELECT * FROM reservations WHERE reservation_id = ?", (reservation_id,)
            )
            return _reservation(rows[0])

    async def _end(
        self,
        conn: aiosqlite.Connection,
        row: aiosqlite.Row,
        state: ReservationState,
        *,
        reason: str,
        now: float,
    ) -> None:
        """Move a held reservation to ``state`` and its units to the matching counter."""
        items = [Item.model_validate(i) for i in json.loads(row["items"])]
        if state is ReservationState.COMMITTED:
            update = "UPDATE stock SET reserved = reserved - ?, committed = committed + ?"
        else:
            update = "UPDATE stock SET reserved = reserved - ?, available = available + ?"
        await conn.executemany(
            update + " WHERE product_id = ?",
            [(i.quantity, i.quantity, i.product_id) for i in items],
        )
        await conn.execute(
            "UPDATE reservations SET state = ?, reason = ?, updated_at = ?"
            " WHERE reservation_id = ?",
            (state.value, reason, now, row["reservation_id"]),
        )

    async def release(self, order_id: str, *, reason: str, now: float | None = None) -> Reservation:
        now = time.time() if now is None else now
        async with self.db.transaction() as conn:
            rows = await _rows(
                conn,
                "SELECT * FROM reservations WHERE order_id = ? ORDER BY reservation_id",
                (order_id,),
            )
            if not rows:
                if self.consistency is Consistency.NAIVE:
                    raise FailedPrecondition(f"order {order_id} holds no reservation to release")
                cur = await conn.execute(
                    "INSERT INTO reservations (order_id, state, items, request_hash, reason,"
                    " expires_at, created_at, updated_at)"
                    " VALUES (?, 'released', '[]', NULL, ?, ?, ?, ?)",
                    (order_id, reason or "released before reserved", now, now, now),
                )
                rows = await _rows(
                    conn, "SELECT * FROM reservations WHERE reservation_id = ?", (cur.lastrowid,)
                )
                return _reservation(rows[0])
            held = [r for r in rows if r["state"] == ReservationState.HELD]
            if not held and any(r["state"] == ReservationState.COMMITTED for r in rows):
                raise FailedPrecondition(
                    f"the reservation of order {order_id} is already committed;"
                    " it cannot be released"
                )
            for row in held:
                await self._end(conn, row, ReservationState.RELEASED, reason=reason, now=now)
            rows = await _rows(
                conn,
                "SELECT * FROM reservations WHERE order_id = ?"
                " ORDER BY reservation_id DESC LIMIT 1",
                (order_id,),
            )
            return _reservation(rows[0])

    async def commit(self, order_id: str, *, now: float | None = None) -> Reservation:
        now = time.time() if now is None else now
        async with self.db.transaction() as conn:
            await self._expire(conn, now, order_id=order_id)
            rows = await _rows(
                conn,
                "SELECT * FROM reservations WHERE order_id = ? ORDER BY reservation_id",
                (order_id,),
            )
            if not rows:
                raise FailedPrecondition(f"order {order_id} holds no reservation to commit")
            held = [r for r in rows if r["state"] == ReservationState.HELD]
            if not held:
                last = rows[-1]
                if last["state"] == ReservationState.COMMITTED:
                    return _reservation(last)
                raise FailedPrecondition(
                    f"the reservation of order {order_id} is {last['state']}"
                    f"{' (' + last['reason'] + ')' if last['reason'] else ''};"
                    " it cannot be committed"
                )
            for row in held:
                await self._end(conn, row, ReservationState.COMMITTED, reason="", now=now)
            rows = await _rows(
                conn,
                "SELECT * FROM reservations WHERE reservation_id = ?",
                (held[-1]["reservation_id"],),
            )
            return _reservation(rows[0])

    async def _expire(
        self, conn: aiosqlite.Connection, now: float, *, order_id: str | None = None
    ) -> int:
        query = "SELECT * FROM reservations WHERE state = 'held' AND expires_at <= ?"
        args: list[object] = [now]
        if order_id is not None:
            query += " AND order_id = ?"
            args.append(order_id)
        rows = await _rows(conn, query + " LIMIT 500", args)
        for row in rows:
            await self._end(conn, row, ReservationState.EXPIRED, reason="expired", now=now)
        return len(rows)

    async def expire_due(self, now: float | None = None) -> int:
        """Release every held reservation past its expiry; returns how many."""
        now = time.time() if now is None else now
        async with self.db.transaction() as conn:
            return await self._expire(conn, now)

    async def audit(self) -> InventoryAudit:
        async with self.db.snapshot() as conn:
            stock = await _rows(conn, "SELECT * FROM stock ORDER BY product_id")
            reservations = await _rows(conn, "SELECT * FROM reservations ORDER BY reservation_id")
        return InventoryAudit(
            taken_at=time.time(),
            stock=[
                StockRow(
                    product_id=r["product_id"],
                    initial=r["initial"],
                    available=r["available"],
                    reserved=r["reserved"],
                    committed=r["committed"],
                )
                for r in stock
            ],
            reservations=[_reservation(r) for r in reservations],
        )
