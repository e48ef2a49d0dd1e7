"""Inventory and payments domain logic over real SQLite files: idempotency, tombstones,
expiry, voided keys, and refusals that write nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.consistency import Consistency
from services.common.crash import CrashSwitch
from services.common.db import Database
from services.common.errors import FailedPrecondition, InvalidArgument
from services.inventory import store as inventory_store
from services.inventory.api import Item, ReservationState
from services.inventory.store import InventoryStore
from services.payments import store as payments_store
from services.payments.api import ChargeRequest, ChargeState, RefundRequest
from services.payments.charging import Payments
from services.payments.provider import PaymentProvider, ProviderSettings
from services.payments.store import PaymentsStore


@pytest.fixture
async def inventory(tmp_path: Path) -> AsyncIterator[InventoryStore]:
    db = await Database.open(tmp_path / "inventory.sqlite3", inventory_store.MIGRATIONS)
    try:
        yield await InventoryStore.open(db, consistency=Consistency.SAGA, seed_count=20)
    finally:
        await db.close()


async def stock_of(store: InventoryStore, product_id: str) -> tuple[int, int, int]:
    audit = await store.audit()
    row = next(r for r in audit.stock if r.product_id == product_id)
    return row.available, row.reserved, row.committed


async def test_reserve_is_idempotent_by_order_id(inventory: InventoryStore) -> None:
    available, _, _ = await stock_of(inventory, "p-001")
    items = [Item(product_id="p-001", quantity=3)]
    first = await inventory.reserve("o-1", items, ttl_seconds=60)
    again = await inventory.reserve("o-1", items, ttl_seconds=60)
    assert again.reservation_id == first.reservation_id
    assert await stock_of(inventory, "p-001") == (available - 3, 3, 0)
    with pytest.raises(InvalidArgument, match="different items"):
        await inventory.reserve("o-1", [Item(product_id="p-001", quantity=4)], ttl_seconds=60)
    committed = await inventory.commit("o-1")
    assert committed.state is ReservationState.COMMITTED
    assert (await inventory.commit("o-1")).state is ReservationState.COMMITTED
    assert await stock_of(inventory, "p-001") == (available - 3, 0, 3)
    with pytest.raises(FailedPrecondition, match="already committed"):
        await inventory.release("o-1", reason="late")


async def test_release_before_reserve_leaves_a_tombstone(inventory: InventoryStore) -> None:
    before = await stock_of(inventory, "p-002")
    await inventory.release("o-2", reason="compensated")
    with pytest.raises(FailedPrecondition, match="already released"):
        await inventory.reserve("o-2", [Item(product_id="p-002", quantity=1)], ttl_seconds=60)
    assert await stock_of(inventory, "p-002") == before


async def test_expired_reservations_return_their_stock(inventory: InventoryStore) -> None:
    before = await stock_of(inventory, "p-003")
    await inventory.reserve("o-3", [Item(product_id="p-003", quantity=2)], ttl_seconds=1, now=0)
    assert await inventory.expire_due(now=5) == 1
    assert await stock_of(inventory, "p-003") == before
    with pytest.raises(FailedPrecondition, match="expired"):
        await inventory.commit("o-3")


async def test_refused_reservations_write_nothing(inventory: InventoryStore) -> None:
    before = await inventory.audit()
    with pytest.raises(InvalidArgument, match="p-999"):
        await inventory.reserve("o-4", [Item(product_id="p-999", quantity=1)], ttl_seconds=60)
    with pytest.raises(FailedPrecondition, match="insufficient stock"):
        await inventory.reserve(
            "o-4",
            [Item(product_id="p-001", quantity=1), Item(product_id="p-010", quantity=99)],
            ttl_seconds=60,
        )
    after = await inventory.audit()
    assert after.stock == before.stock
    assert after.reservations == before.reservations


async def test_naive_reserve_twice_holds_stock_twice(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "naive.sqlite3", inventory_store.MIGRATIONS)
    try:
        store = await InventoryStore.open(db, consistency=Consistency.NAIVE, seed_count=5)
        available, _, _ = await stock_of(store, "p-001")
        for _ in range(2):
            await store.reserve("o-1", [Item(product_id="p-001", quantity=1)], ttl_seconds=60)
        assert await stock_of(store, "p-001") == (available - 2, 2, 0)
    finally:
        await db.close()


@pytest.fixture
async def payments(tmp_path: Path) -> AsyncIterator[Payments]:
    db = await Database.open(tmp_path / "payments.sqlite3", payments_store.MIGRATIONS)
    settings = ProviderSettings(distribution="constant", latency_ms=0, decline_probability=0.0)
    try:
        yield Payments(
            PaymentsStore(db),
            PaymentProvider(settings),
            consistency=Consistency.SAGA,
            crash=CrashSwitch(),
        )
    finally:
        await db.close()


async def test_charge_is_idempotent_by_key(payments: Payments) -> None:
    request = ChargeRequest(order_id="o-1", amount_cents=1234)
    first = await payments.charge(request, key="charge:o-1")
    again = await payments.charge(request, key="charge:o-1")
    assert first.state is ChargeState.SUCCEEDED
    assert again.charge_id == first.charge_id
    with pytest.raises(InvalidArgument, match="already used"):
        await payments.charge(ChargeRequest(order_id="o-1", amount_cents=999), key="charge:o-1")
    audit = await payments.store.audit()
    assert [e.amount_cents for e in audit.ledger] == [1234]
    refund = await payments.refund(
        RefundRequest(order_id="o-1", charge_key="charge:o-1"), key="refund:o-1"
    )
    assert refund.refund.amount_cents == 1234
    assert refund.charge.state is ChargeState.REFUNDED
    await payments.refund(RefundRequest(order_id="o-1", charge_key="charge:o-1"), key="refund:o-1")
    audit = await payments.store.audit()
    assert sum(e.amount_cents for e in audit.ledger) == 0


async def test_refund_before_charge_voids_the_key(payments: Payments) -> None:
    await payments.refund(RefundRequest(order_id="o-2", charge_key="charge:o-2"), key="refund:o-2")
    late = await payments.charge(ChargeRequest(order_id="o-2", amount_cents=500), key="charge:o-2")
    assert late.state is ChargeState.VOIDED
    assert (await payments.store.audit()).ledger == []


async def test_a_charge_left_pending_by_a_crash_is_resolved_once(payments: Payments) -> None:
    charge, created = await payments.store.begin_charge(
        order_id="o-3", amount_cents=700, currency="USD", key="charge:o-3", request_hash="h"
    )
    assert created
    assert charge.state is ChargeState.PENDING
    assert await payments.resolve_pending(older_than_seconds=-1) == 1
    assert await payments.resolve_pending(older_than_seconds=-1) == 0
    audit = await payments.store.audit()
    assert [c.state for c in audit.charges] == [ChargeState.SUCCEEDED]
    assert [e.amount_cents for e in audit.ledger] == [700]


async def test_saga_mode_requires_an_idempotency_key(payments: Payments) -> None:
    with pytest.raises(InvalidArgument, match="Idempotency-Key"):
        await payments.charge(ChargeRequest(order_id="o-4", amount_cents=1), key=None)
    assert (await payments.store.audit()).charges == []


def test_provider_decisions_depend_only_on_the_key() -> None:
    provider = PaymentProvider(ProviderSettings(decline_probability=0.5, seed=7))
    decisions = [provider.decide(f"k{i}").approved for i in range(200)]
    assert decisions == [provider.decide(f"k{i}").approved for i in range(200)]
    assert 60 < decisions.count(False) < 140
    capped = PaymentProvider(ProviderSettings(latency_ms=1000, spread=3, max_latency_ms=50))
    assert all(capped.sample_latency() <= 0.05 for _ in range(100))
