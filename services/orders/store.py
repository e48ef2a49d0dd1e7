"""Orders' own database: orders, their items, the saga's step and its history.

Every saga transition is one conditional UPDATE (``WHERE step = <from> AND lease_owner = <me>``)
plus a row in ``saga_log``, in one transaction: two drivers (an instance's request and another
instance's recovery loop) can never both move one saga. A driver holds a lease on the order
(``lease_owner``, ``lease_until``) renewed at every step; recovery takes over only orders whose
lease has run out, i.e. whose driver crashed or gave up — or at once when the lease belongs to an
earlier run of the claiming instance itself (owners are ``<instance id>/<run>``, and one instance
id never runs twice at a time), so a restarted instance finishes its own sagas without waiting.

A saga that must wait (an uncertain outcome) counts its ``attempts``; its lease is shortened to
``base * 2**attempts`` capped at ``cap`` seconds, so recovery retries it with bounded backoff.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import aiosqlite

from services.common.db import Database
from services.common.errors import IdempotencyKeyReused
from services.orders.api import Order, OrderItem
from services.orders.saga import TERMINAL, Step, status_of

MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE orders (
        order_id        TEXT PRIMARY KEY,
        customer_id     TEXT NOT NULL,
        idempotency_key TEXT UNIQUE,
        request_hash    TEXT NOT NULL,
        step            TEXT NOT NULL,
        total_cents     INTEGER NOT NULL CHECK (total_cents >= 0),
        currency        TEXT NOT NULL DEFAULT 'USD',
        failure_reason  TEXT NOT NULL DEFAULT '',
        lease_owner     TEXT,
        lease_until     REAL NOT NULL DEFAULT 0,
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL
    );
    CREATE INDEX orders_open ON orders (step, lease_until);
    CREATE TABLE order_items (
        order_id         TEXT NOT NULL REFERENCES orders (order_id),
        product_id       TEXT NOT NULL,
        quantity         INTEGER NOT NULL CHECK (quantity > 0),
        unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0),
        PRIMARY KEY (order_id, product_id)
    );
    CREATE TABLE saga_log (
        entry_id   INTEGER PRIMARY KEY AUTOINCREMENT,
        order_id   TEXT NOT NULL REFERENCES orders (order_id),
        step       TEXT NOT NULL,
        detail     TEXT NOT NULL DEFAULT '',
        owner      TEXT NOT NULL,
        at         REAL NOT NULL
    );
    CREATE INDEX saga_log_by_order ON saga_log (order_id, entry_id);
    """,
    """
    ALTER TABLE orders ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    """,
)

OPEN_STEPS = tuple(s.value for s in Step if s not in TERMINAL)


async def _all(
    conn: aiosqlite.Connection, query: str, args: Sequence[object] = ()
) -> list[aiosqlite.Row]:
    async with conn.execute(query, args) as cur:
        return list(await cur.fetchall())


def _order(row: aiosqlite.Row, items: Sequence[aiosqlite.Row]) -> Order:
    step = Step(row["step"])
    return Order(
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        status=status_of(step),
        step=step.value,
        items=[
            OrderItem(
                product_id=i["product_id"],
                quantity=i["quantity"],
                unit_price_cents=i["unit_price_cents"],
            )
            for i in items
        ],
        total_cents=row["total_cents"],
        currency=row["currency"],
        failure_reason=row["failure_reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class OrdersStore:
    """Typed queries over orders' database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _load(self, conn: aiosqlite.Connection, order_id: str) -> Order | None:
        rows = await _all(conn, "SELECT * FROM orders WHERE order_id = ?", (order_id,))
        if not rows:
            return None
        items = await _all(
            conn, "SELECT * FROM order_items WHERE order_id = ? ORDER BY product_id", (order_id,)
        )
        return _order(rows[0], items)

    async def create(
        self,
        *,
        order_id: str,
        customer_id: str,
        items: Sequence[OrderItem],
        idempotency_key: str | None,
        request_hash: str,
        owner: str,
        lease_seconds: float,
        now: float | None = None,
    ) -> tuple[Order, bool]:
        """Record a new order at step ``started`` under ``owner``'s lease.

        With an idempotency key already used for the same request, answers that order instead
        (flag False); for a different request, refuses.
        """
        now = time.time() if now is None else now
        async with self.db.transaction() as conn:
            if idempotency_key is not None:
                rows = await _all(
                    conn,
                    "SELECT order_id, request_hash FROM orders WHERE idempotency_key = ?",
                    (idempotency_key,),
                )
                if rows:
                    if rows[0]["request_hash"] != request_hash:
                        raise IdempotencyKeyReused(
                            f"idempotency key {idempotency_key!r} was already used for a different"
                            " order; send the original order again or use a new key"
                        )
                    existing = await self._load(conn, rows[0]["order_id"])
                    assert existing is not None
                    return existing, False
            total = sum(i.quantity * i.unit_price_cents for i in items)
            await conn.execute(
                "INSERT INTO orders (order_id, customer_id, idempotency_key, request_hash, step,"
                " total_cents, lease_owner, lease_until, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, 'started', ?, ?, ?, ?, ?)",
                (
                    order_id,
                    customer_id,
                    idempotency_key,
                    request_hash,
                    total,
                    owner,
                    now + lease_seconds,
                    now,
                    now,
                ),
            )
            await conn.executemany(
                "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)"
                " VALUES (?, ?, ?, ?)",
                [(order_id, i.product_id, i.quantity, i.unit_price_cents) for i in items],
            )
            await conn.execute(
                "INSERT INTO saga_log (order_id, step, owner, at) VALUES (?, 'started', ?, ?)",
                (order_id, owner, now),
            )
            order = await self._load(conn, order_id)
            assert order is not None
            return order, True

    async def get(self, order_id: str) -> Order | None:
        async with self.db.snapshot() as conn:
            return await self._load(conn, order_id)

    async def advance(
        self,
        order_id: str,
        *,
        from_step: Step,
        to_step: Step,
        owner: str,
        lease_seconds: float,
        reason: str = "",
        now: float | None = None,
    ) -> bool:
        """Move the saga from ``from_step`` to ``to_step`` if ``owner`` still drives it."""
        now = time.time() if now is None else now
        lease_until = 0.0 if to_step in TERMINAL else now + lease_seconds
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE orders SET step = ?, updated_at = ?, lease_until = ?, attempts = 0,"
                " failure_reason = CASE WHEN ? != '' THEN ? ELSE failure_reason END"
                " WHERE order_id = ? AND step = ? AND lease_owner = ?",
                (
                    to_step.value,
                    now,
                    lease_until,
                    reason,
                    reason,
                    order_id,
                    from_step.value,
                    owner,
                ),
            )
            if cur.rowcount != 1:
                return False
            await conn.execute(
                "INSERT INTO saga_log (order_id, step, detail, owner, at) VALUES (?, ?, ?, ?, ?)",
                (order_id, to_step.value, reason, owner, now),
            )
            return True

    async def renew(
        self, order_id: str, *, owner: str, lease_seconds: float, now: float | None = None
    ) -> bool:
        """Extend ``owner``'s lease (or shorten it: recovery then retries sooner)."""
        now = time.time() if now is None else now
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE orders SET lease_until = ? WHERE order_id = ? AND lease_owner = ?",
                (now + lease_seconds, order_id, owner),
            )
            return cur.rowcount == 1

    async def back_off(
        self,
        order_id: str,
        *,
        owner: str,
        base: float,
        cap: float,
        now: float | None = None,
    ) -> float | None:
        """Count a failed attempt and let recovery retry after ``base * 2**attempts`` (at most
        ``cap``) seconds; returns that delay, None if ``owner`` no longer drives the saga."""
        now = time.time() if now is None else now
        async with self.db.transaction() as conn:
            rows = await _all(
                conn,
                "SELECT attempts FROM orders WHERE order_id = ? AND lease_owner = ?",
                (order_id, owner),
            )
            if not rows:
                return None
            delay = min(cap, base * float(2 ** min(int(rows[0]["attempts"]), 16)))
            await conn.execute(
                "UPDATE orders SET attempts = attempts + 1, lease_until = ? WHERE order_id = ?",
                (now + delay, order_id),
            )
            return delay

    async def claim_stale(
        self, *, owner: str, lease_seconds: float, limit: int, now: float | None = None
    ) -> list[Order]:
        """Take over open sagas whose lease has run out, or that an earlier run of this instance
        held (``owner`` is ``<instance id>/<run>``); returns them, now under ``owner``."""
        now = time.time() if now is None else now
        marks = ",".join("?" * len(OPEN_STEPS))
        instance = owner.rpartition("/")[0]
        earlier_run = f"{instance}/" if instance else "\x00"  # no owner starts with NUL
        async with self.db.transaction() as conn:
            rows = await _all(
                conn,
                f"SELECT order_id FROM orders WHERE step IN ({marks}) AND (lease_until < ?"
                " OR (substr(lease_owner, 1, ?) = ? AND lease_owner != ?))"
                " ORDER BY created_at LIMIT ?",
                (*OPEN_STEPS, now, len(earlier_run), earlier_run, owner, limit),
            )
            claimed = []
            for row in rows:
                await conn.execute(
                    "UPDATE orders SET lease_owner = ?, lease_until = ? WHERE order_id = ?",
                    (owner, now + lease_seconds, row["order_id"]),
                )
                await conn.execute(
                    "INSERT INTO saga_log (order_id, step, detail, owner, at)"
                    " SELECT order_id, step, 'recovery took over', ?, ? FROM orders"
                    " WHERE order_id = ?",
                    (owner, now, row["order_id"]),
                )
                order = await self._load(conn, row["order_id"])
                assert order is not None
                claimed.append(order)
            return claimed

    async def history(self, order_id: str) -> list[tuple[str, str]]:
        async with self.db.snapshot() as conn:
            rows = await _all(
                conn,
                "SELECT step, detail FROM saga_log WHERE order_id = ? ORDER BY entry_id",
                (order_id,),
            )
        return [(r["step"], r["detail"]) for r in rows]

    async def all_orders(self) -> list[Order]:
        async with self.db.snapshot() as conn:
            rows = await _all(conn, "SELECT * FROM orders ORDER BY created_at, order_id")
            items = await _all(conn, "SELECT * FROM order_items ORDER BY order_id, product_id")
        by_order: dict[str, list[aiosqlite.Row]] = {}
        for item in items:
            by_order.setdefault(item["order_id"], []).append(item)
        return [_order(r, by_order.get(r["order_id"], [])) for r in rows]
