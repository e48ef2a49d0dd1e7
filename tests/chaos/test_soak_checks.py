"""The soak's cross-checks over crafted data: a consistent run passes, each kind of damage is
caught by its check and names the key or order involved; convergence read from polls."""

from __future__ import annotations

from chaos.soak.checks import (
    Answer,
    CheckoutRecord,
    Sample,
    convergence_seconds,
    cross_check,
    told,
)
from services.audit_checks import AuditSnapshot
from services.inventory.api import InventoryAudit, Item, Reservation, ReservationState, StockRow
from services.orders.api import Order, OrderItem, OrdersAudit, OrderStatus
from services.payments.api import Charge, ChargeState, LedgerEntry, PaymentsAudit

NOW = 1_000_000.0
PRICE = 500


def order(oid: str, status: OrderStatus, qty: int = 1) -> Order:
    step = {"pending": "reserved", "confirmed": "confirmed", "failed": "failed"}[status.value]
    return Order(
        order_id=oid,
        customer_id="c",
        status=status,
        step=step,
        items=[OrderItem(product_id="p-001", quantity=qty, unit_price_cents=PRICE)],
        total_cents=qty * PRICE,
        created_at=NOW - 5,
        updated_at=NOW - 4,
    )


def reservation(rid: int, oid: str, state: ReservationState, qty: int = 1) -> Reservation:
    return Reservation(
        reservation_id=rid,
        order_id=oid,
        state=state,
        items=[Item(product_id="p-001", quantity=qty)],
        expires_at=NOW + 100,
        created_at=NOW - 5,
        updated_at=NOW - 4,
    )


def charge(cid: str, oid: str, state: ChargeState, amount: int = PRICE) -> Charge:
    return Charge(
        charge_id=cid,
        order_id=oid,
        amount_cents=amount,
        currency="USD",
        state=state,
        idempotency_key=f"charge:{oid}:{cid}",
        created_at=NOW - 5,
        updated_at=NOW - 4,
    )


def ledger(eid: int, oid: str, amount: int) -> LedgerEntry:
    return LedgerEntry(
        entry_id=eid, order_id=oid, kind="charge", amount_cents=amount, ref_id="x", created_at=NOW
    )


def record(key: str, *answers: tuple[str | None, str | None], qty: int = 1) -> CheckoutRecord:
    r = CheckoutRecord(key=key, client=0, items={"p-001": qty})
    for oid, status in answers:
        r.answers.append(
            Answer(at=NOW, http_status=200 if oid else None, order_id=oid, status=status)
        )
    return r


def snapshot(
    orders: list[Order],
    reservations: list[Reservation],
    charges: list[Charge],
    entries: list[LedgerEntry],
    *,
    initial: int = 10,
) -> AuditSnapshot:
    committed = sum(
        i.quantity for r in reservations if r.state is ReservationState.COMMITTED for i in r.items
    )
    reserved = sum(
        i.quantity for r in reservations if r.state is ReservationState.HELD for i in r.items
    )
    stock = StockRow(
        product_id="p-001",
        initial=initial,
        available=initial - committed - reserved,
        reserved=reserved,
        committed=committed,
    )
    return AuditSnapshot(
        orders=OrdersAudit(
            taken_at=NOW, consistency="saga", saga_timeout_seconds=30, orders=orders
        ),
        inventory=InventoryAudit(taken_at=NOW, stock=[stock], reservations=reservations),
        payments=PaymentsAudit(taken_at=NOW, charges=charges, refunds=[], ledger=entries),
    )


def consistent() -> tuple[list[CheckoutRecord], AuditSnapshot]:
    records = [
        record("k1", (None, None), ("o-1", "confirmed"), ("o-1", "confirmed")),
        record("k2", ("o-2", "failed")),
        record("k3", ("o-3", "pending")),
        record("k4", (None, None)),
    ]
    snap = snapshot(
        [
            order("o-1", OrderStatus.CONFIRMED),
            order("o-2", OrderStatus.FAILED),
            order("o-3", OrderStatus.CONFIRMED),
        ],
        [
            reservation(1, "o-1", ReservationState.COMMITTED),
            reservation(2, "o-2", ReservationState.RELEASED),
            reservation(3, "o-3", ReservationState.COMMITTED),
        ],
        [
            charge("c1", "o-1", ChargeState.SUCCEEDED),
            charge("c2", "o-2", ChargeState.REFUNDED),
            charge("c3", "o-3", ChargeState.SUCCEEDED),
        ],
        [
            ledger(1, "o-1", PRICE),
            ledger(2, "o-2", PRICE),
            ledger(3, "o-2", -PRICE),
            ledger(4, "o-3", PRICE),
        ],
    )
    return records, snap


def violations(records: list[CheckoutRecord], snap: AuditSnapshot) -> dict[str, list[str]]:
    return {
        c.name: [f"{v.subject}: {v.message}" for v in c.violations]
        for c in cross_check(records, snap)
        if c.violations
    }


def test_a_consistent_run_passes() -> None:
    records, snap = consistent()
    assert violations(records, snap) == {}
    assert [told(r) for r in records] == ["confirmed", "failed", "pending", None]


def test_a_key_answered_with_two_orders() -> None:
    records, snap = consistent()
    records[0].answers.append(Answer(at=NOW, http_status=200, order_id="o-9", status="pending"))
    found = violations(records, snap)
    assert "one_order_per_key" in found
    assert "key k1" in found["one_order_per_key"][0]
    assert "o-9" in found["one_order_per_key"][0]


def test_a_confirmation_the_store_does_not_keep() -> None:
    records, snap = consistent()
    snap.orders.orders[0] = order("o-1", OrderStatus.FAILED)
    found = violations(records, snap)
    assert any("stored as failed" in v for v in found["confirmations_kept"])


def test_a_confirmed_order_missing_or_charged_twice() -> None:
    records, snap = consistent()
    snap.payments.charges.append(charge("c9", "o-1", ChargeState.SUCCEEDED))
    snap.payments.ledger.append(ledger(9, "o-1", PRICE))
    found = violations(records, snap)
    assert any("charged 2 times" in v for v in found["confirmations_kept"])
    assert any("net charge 1000" in v for v in found["confirmations_kept"])
    snap.orders.orders.pop(0)
    assert any("does not know it" in v for v in violations(records, snap)["confirmations_kept"])


def test_a_confirmed_order_stored_with_other_items() -> None:
    records, snap = consistent()
    records[0].items = {"p-001": 2}
    found = violations(records, snap)
    assert any("asked for p-001x2" in v for v in found["confirmations_kept"])


def test_a_failed_order_not_refunded_or_holding_stock() -> None:
    records, snap = consistent()
    snap.payments.ledger.pop(2)  # the refund of o-2
    snap.inventory.reservations[1] = reservation(2, "o-2", ReservationState.HELD)
    row = snap.inventory.stock[0]
    snap.inventory.stock[0] = row.model_copy(update={"reserved": 1, "available": row.available - 1})
    found = violations(records, snap)
    assert any("net charge 500" in v for v in found["failures_settled"])
    assert any("holds p-001x1" in v for v in found["failures_settled"])
    assert any("still reserved" in v for v in found["stock_matches_orders"])


def test_a_client_told_failed_but_charged_and_confirmed() -> None:
    records, snap = consistent()
    snap.orders.orders[1] = order("o-2", OrderStatus.CONFIRMED)
    found = violations(records, snap)
    assert any("stored as confirmed" in v for v in found["failures_settled"])


def test_an_order_still_pending() -> None:
    records, snap = consistent()
    snap.orders.orders[2] = order("o-3", OrderStatus.PENDING)
    found = violations(records, snap)
    assert any("o-3" in v and "still pending" in v for v in found["answers_final"])


def test_stock_committed_without_a_confirmed_order() -> None:
    records, snap = consistent()
    snap.inventory.stock[0] = snap.inventory.stock[0].model_copy(
        update={"committed": 3, "available": 7}
    )
    found = violations(records, snap)
    assert any("committed 3 != 2" in v for v in found["stock_matches_orders"])


def test_convergence_is_the_first_poll_that_stays_settled() -> None:
    ok: tuple[str, ...] = ()
    samples = [
        Sample(at=99.0, not_ready=ok, pending_orders=0),
        Sample(at=101.0, not_ready=("orders-1",), pending_orders=3),
        Sample(at=104.0, not_ready=ok, pending_orders=0),
        Sample(at=105.0, not_ready=ok, pending_orders=None),
        Sample(at=107.5, not_ready=ok, pending_orders=0),
        Sample(at=108.5, not_ready=ok, pending_orders=0),
    ]
    assert convergence_seconds(samples, since=100.0) == 7.5
    assert convergence_seconds(samples[:4], since=100.0) is None
    assert convergence_seconds([Sample(at=100.5, not_ready=ok, pending_orders=0)], since=100) == 0.5
    pending_charge = Sample(at=102.0, not_ready=ok, pending_orders=0, pending_charges=1)
    assert convergence_seconds([pending_charge], since=100.0) is None
