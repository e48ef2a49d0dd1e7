"""Payments' own database: charges, refunds and the ledger of money actually moved.

The ledger is append-only: ``+amount`` when a charge succeeds, ``-amount`` when it is refunded;
the net of an order's entries is what the customer paid. A charge row is written as
``pending`` before the provider is asked, so a crash in the middle of a charge leaves a trace
that recovery can resolve.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import aiosqlite

from services.common.db import Database
from services.common.errors import InvalidArgument, NotFound
from services.payments.api import Charge, ChargeState, LedgerEntry, PaymentsAudit, Refund

MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE charges (
        charge_id       TEXT PRIMARY KEY,
        idempotency_key TEXT UNIQUE,
        order_id        TEXT NOT NULL,
        amount_cents    INTEGER NOT NULL CHECK (amount_cents >= 0),
        currency        TEXT NOT NULL,
        state           TEXT NOT NULL,
        request_hash    TEXT,
        decline_reason  TEXT NOT NULL DEFAULT '',
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL
    );
    CREATE INDEX charges_by_order ON charges (order_id);
    CREATE INDEX charges_by_state ON charges (state, updated_at);
    CREATE TABLE refunds (
        refund_id       TEXT PRIMARY KEY,
        idempotency_key TEXT UNIQUE,
        charge_id       TEXT NOT NULL REFERENCES charges (charge_id),
        order_id        TEXT NOT NULL,
        amount_cents    INTEGER NOT NULL CHECK (amount_cents >= 0),
        reason          TEXT NOT NULL DEFAULT '',
        request_hash    TEXT NOT NULL,
        created_at      REAL NOT NULL
    );
    CREATE TABLE ledger (
        entry_id     INTEGER PRIMARY KEY AUTOINCREMENT,
        order_id     TEXT NOT NULL,
        kind         TEXT NOT NULL CHECK (kind IN ('charge', 'refund')),
        amount_cents INTEGER NOT NULL,
        ref_id       TEXT NOT NULL,
        created_at   REAL NOT NULL
    );
    CREATE INDEX ledger_by_order ON ledger (order_id);
    """,
)


def _charge(row: aiosqlite.Row) -> Charge:
    return Charge(
        charge_id=row["charge_id"],
        order_id=row["order_id"],
        amount_cents=row["amount_cents"],
        currency=row["currency"],
        state=ChargeState(row["state"]),
        idempotency_key=row["idempotency_key"],
        decline_reason=row["decline_reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _refund(row: aiosqlite.Row) -> Refund:
    return Refund(
        refund_id=row["refund_id"],
        order_id=row["order_id"],
        charge_id=row["charge_id"],
        amount_cents=row["amount_cents"],
        idempotency_key=row["idempotency_key"],
        reason=row["reason"],
        created_at=row["created_at"],
    )


async def _one(
    conn: aiosqlite.Connection, query: str, args: Sequence[object]
) -> aiosqlite.Row | None:
    async with conn.execute(query, args) as cur:
        return await cur.fetchone()


async def _all(
    conn: aiosqlite.Connection, query: str, args: Sequence[object] = ()
) -> list[aiosqlite.Row]:
    async with conn.execute(query, args) as cur:
        return list(await cur.fetchall())


def _reused_key(key: str) -> InvalidArgument:
    return InvalidArgument(
        f"idempotency key {key!r} was already used with a different request;"
        " send the original request again or use a new key"
    )


class PaymentsStore:
    """Typed queries and mutations over payments' database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def begin_charge(
        self,
        *,
        order_id: str,
        amount_cents: int,
        currency: str,
        key: str | None,
        request_hash: str,
        now: float | None = None,
    ) -> tuple[Charge, bool]:
        """Record a pending charge, or find the one made with ``key``; flag: newly created."""
        now = time.time() if now is None else now
        async with self.db.transaction() as conn:
            if key is not None:
                row = await _one(conn, "SELECT * FROM charges WHERE idempotency_key = ?", (key,))
                if row is not None:
                    if row["state"] != ChargeState.VOIDED and row["request_hash"] != request_hash:
                        raise _reused_key(key)
                    return _charge(row), False
            charge_id = f"ch_{uuid.uuid4().hex[:20]}"
            await conn.execute(
                "INSERT INTO charges (charge_id, idempotency_key, order_id, amount_cents, currency,"
                " state, request_hash, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                (charge_id, key, order_id, amount_cents, currency, request_hash, now, now),
            )
            row = await _one(conn, "SELECT * FROM charges WHERE charge_id = ?", (charge_id,))
            assert row is not None
            return _charge(row), True

    async def finish_charge(
        self, charge_id: str, *, approved: bool, decline_reason: str, now: float | None = None
    ) -> Charge:
        """Record the provider's answer if the charge is still pending; returns the charge."""
        now = time.time() if now is None else now
        async with self.db.transaction() as conn:
            state = ChargeState.SUCCEEDED if approved else ChargeState.DECLINED
            cur = await conn.execute(
                "UPDATE charges SET state = ?, decline_reason = ?, updated_at = ?"
                " WHERE charge_id = ? AND state = 'pending'",
                (state.value, decline_reason, now, charge_id),
            )
            row = await _one(conn, "SELECT * FROM charges WHERE charge_id = ?", (charge_id,))
            if row is None:
                raise NotFound(f"charge {charge_id} does not exist")
            if cur.rowcount == 1 and approved:
                await conn.execute(
                    "INSERT INTO ledger (order_id, kind, amount_cents, ref_id, created_at)"
                    " VALUES (?, 'charge', ?, ?, ?)",
                    (row["order_id"], row["amount_cents"], charge_id, now),
                )
            return _charge(row)

    async def find_charge(self, *, charge_id: str | None, key: str | None) -> Charge | None:
        async with self.db.snapshot() as conn:
            if charge_id is not None:
                row = await _one(conn, "SELECT * FROM charges WHERE charge_id = ?", (charge_id,))
            else:
                row = await _one(conn, "SELECT * FROM charges WHERE idempotency_key = ?", (key,))
        return None if row is None else _charge(row)

    async def refund(
        self,
        *,
        order_id: str,
        charge_id: str | None,
        charge_key: str | None,
        reason: str,
        key: str | None,
        request_hash: str,
        now: float | None = None,
    ) -> tuple[Refund, Charge] | Charge:
        """Refund a charge in full; returns the pending charge instead if it must be resolved.

        A charge named by key that does not exist is voided (recorded as ``voided`` with amount
        0), so a Charge with that key arriving later is refused instead of taking money.
        """
        now = time.time() if now is None else now
        async with self.db.transaction() as conn:
            if key is not None:
                row = await _one(conn, "SELECT * FROM refunds WHERE idempotency_key = ?", (key,))
                if row is not None:
                    if row["request_hash"] != request_hash:
                        raise _reused_key(key)
                    charge_row = await _one(
                        conn, "SELECT * FROM charges WHERE charge_id = ?", (row["charge_id"],)
                    )
                    assert charge_row is not None
                    return _refund(row), _charge(charge_row)
            if charge_id is not None:
                charge_row = await _one(
                    conn, "SELECT * FROM charges WHERE charge_id = ?", (charge_id,)
                )
                if charge_row is None:
                    raise InvalidArgument(f"charge {charge_id} does not exist; check the charge id")
            else:
                charge_row = await _one(
                    conn, "SELECT * FROM charges WHERE idempotency_key = ?", (charge_key,)
                )
                if charge_row is None:
                    voided_id = f"ch_{uuid.uuid4().hex[:20]}"
                    await conn.execute(
                        "INSERT INTO charges (charge_id, idempotency_key, order_id, amount_cents,"
                        " currency, state, request_hash, decline_reason, created_at, updated_at)"
                        " VALUES (?, ?, ?, 0, 'USD', 'voided', NULL, ?, ?, ?)",
                        (voided_id, charge_key, order_id, reason or "voided by refund", now, now),
                    )
                    charge_row = await _one(
                        conn, "SELECT * FROM charges WHERE charge_id = ?", (voided_id,)
                    )
                    assert charge_row is not None
            if charge_row["order_id"] != order_id:
                raise InvalidArgument(
                    f"charge {charge_row['charge_id']} belongs to order {charge_row['order_id']},"
                    f" not {order_id}"
                )
            state = ChargeState(charge_row["state"])
            if state is ChargeState.PENDING:
                return _charge(charge_row)
            amount = 0
            if state is ChargeState.SUCCEEDED:
                amount = int(charge_row["amount_cents"])
                await conn.execute(
                    "UPDATE charges SET state = 'refunded', updated_at = ? WHERE charge_id = ?",
                    (now, charge_row["charge_id"]),
                )
            refund_id = f"re_{uuid.uuid4().hex[:20]}"
            await conn.execute(
                "INSERT INTO refunds (refund_id, idempotency_key, charge_id, order_id,"
                " amount_cents, reason, request_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    refund_id,
                    key,
                    charge_row["charge_id"],
                    order_id,
                    amount,
                    reason,
                    request_hash,
                    now,
                ),
            )
            if amount:
                await conn.execute(
                    "INSERT INTO ledger (order_id, kind, amount_cents, ref_id, created_at)"
                    " VALUES (?, 'refund', ?, ?, ?)",
                    (order_id, -amount, refund_id, now),
                )
            refund_row = await _one(conn, "SELECT * FROM refunds WHERE refund_id = ?", (refund_id,))
            charge_row = await _one(
                conn, "SELECT * FROM charges WHERE charge_id = ?", (charge_row["charge_id"],)
            )
            assert refund_row is not None
            assert charge_row is not None
            return _refund(refund_row), _charge(charge_row)

    async def pending_charges(self, *, older_than: float, limit: int = 100) -> list[Charge]:
        async with self.db.snapshot() as conn:
            rows = await _all(
                conn,
                "SELECT * FROM charges WHERE state = 'pending' AND updated_at <= ?"
                " ORDER BY updated_at LIMIT ?",
                (older_than, limit),
            )
        return [_charge(r) for r in rows]

    async def audit(self) -> PaymentsAudit:
        async with self.db.snapshot() as conn:
            charges = await _all(conn, "SELECT * FROM charges ORDER BY created_at, charge_id")
            refunds = await _all(conn, "SELECT * FROM refunds ORDER BY created_at, refund_id")
            ledger = await _all(conn, "SELECT * FROM ledger ORDER BY entry_id")
        return PaymentsAudit(
            taken_at=time.time(),
            charges=[_charge(r) for r in charges],
            refunds=[_refund(r) for r in refunds],
            ledger=[
                LedgerEntry(
                    entry_id=r["entry_id"],
                    order_id=r["order_id"],
                    kind=r["kind"],
                    amount_cents=r["amount_cents"],
                    ref_id=r["ref_id"],
                    created_at=r["created_at"],
                )
                for r in ledger
            ],
        )
