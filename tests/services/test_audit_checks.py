"""The audit's checks over crafted snapshots: a consistent one passes, each kind of damage is
caught by its check and names the order or product involved."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.audit_checks import AuditSnapshot, run_checks
from services.inventory.api import InventoryAudit, Item, Reservation, ReservationState, StockRow
from services.orders.api import Order, OrderItem, OrdersAudit, OrderStatus
from services.payments.api import Charge, ChargeState, LedgerEntry, PaymentsAudit, Refund

NOW = 1_000_000.0


def order(order_id: str, status: OrderStatus, *, qty: int = 2, price: int = 500) -> Order:
    step = {"pending": "reserved", "confirmed": "confirmed", "failed": "failed"}[status.value]
    return Order(
        order_id=order_id,
        customer_id="c",
        status=status,
        step=step,
        items=[OrderItem(product_id="p-001", quantity=qty, unit_price_cents=price)],
        total_cents=qty * price,
        created_at=NOW - 5,
        updated_at=NOW - 4,
    )


def reservation(rid: int, order_id: str, state: ReservationState, qty: int = 2) -> Reservation:
    return Reservation(
        reservation_id=rid,
        order_id=order_id,
        state=state,
        items=[Item(product_id="p-001", quantity=qty)],
        expires_at=NOW + 100,
        created_at=NOW - 5,
        updated_at=NOW - 4,
    )


def charge(cid: str, order_id: str, state: ChargeState, amount: int = 1000) -> Charge:
    return Charge(
        charge_id=cid,
        order_id=order_id,
        amount_cents=amount,
        currency="USD",
        state=state,
        idempotency_key=f"charge:{order_id}:{cid}",
        created_at=NOW - 5,
        updated_at=NOW - 4,
    )


def entry(eid: int, order_id: str, amount: int) -> LedgerEntry:
    return LedgerEntry(
        entry_id=eid,
        order_id=order_id,
        kind="charge" if amount > 0 else "refund",
        amount_cents=amount,
        ref_id=f"r{eid}",
        created_at=NOW - 4,
    )


def consistent() -> AuditSnapshot:
    """o-ok confirmed (paid 1000, 2 committed), o-bad failed (charged then refunded, released),
    o-wip pending (2 held, nothing charged yet)."""
    orders = OrdersAudit(
        taken_at=NOW,
        consistency="saga",
        saga_timeout_seconds=30,
        orders=[
            order("o-ok", OrderStatus.CONFIRMED),
            order("o-bad", OrderStatus.FAILED),
            order("o-wip", OrderStatus.PENDING),
        ],
    )
    inventory = InventoryAudit(
        taken_at=NOW,
        stock=[StockRow(product_id="p-001", initial=10, available=6, reserved=2, committed=2)],
        reservations=[
            reservation(1, "o-ok", ReservationState.COMMITTED),
            reservation(2, "o-bad", ReservationState.RELEASED),
            reservation(3, "o-wip", ReservationState.HELD),
        ],
    )
    payments = PaymentsAudit(
        taken_at=NOW,
        charges=[
            charge("ch1", "o-ok", ChargeState.SUCCEEDED),
            charge("ch2", "o-bad", ChargeState.REFUNDED),
        ],
        refunds=[
            Refund(
                refund_id="re1",
                order_id="o-bad",
                charge_id="ch2",
                amount_cents=1000,
                created_at=NOW,
            )
        ],
        ledger=[entry(1, "o-ok", 1000), entry(2, "o-bad", 1000), entry(3, "o-bad", -1000)],
    )
    return AuditSnapshot(orders=orders, inventory=inventory, payments=payments)


def test_a_consistent_snapshot_passes() -> None:
    report = run_checks(consistent())
    assert report.ok, report.violations
    assert report.counts["orders_confirmed"] == 1
    assert len(report.checks) == 6


def _lose_stock(s: AuditSnapshot) -> None:
    s.inventory.stock[0].available -= 1


def _negative_stock(s: AuditSnapshot) -> None:
    s.inventory.stock[0] = StockRow(
        product_id="p-001", initial=4, available=-2, reserved=2, committed=4
    )


def _reserved_counter_drift(s: AuditSnapshot) -> None:
    s.inventory.reservations[2].items[0].quantity = 3


def _confirmed_unpaid(s: AuditSnapshot) -> None:
    s.payments.charges[0].state = ChargeState.DECLINED
    s.payments.ledger.pop(0)


def _confirmed_wrong_amount(s: AuditSnapshot) -> None:
    s.payments.ledger[0].amount_cents = 900


def _confirmed_not_committed(s: AuditSnapshot) -> None:
    s.inventory.reservations[0].state = ReservationState.HELD
    s.inventory.stock[0] = StockRow(
        product_id="p-001", initial=10, available=6, reserved=4, committed=0
    )


def _failed_kept_money(s: AuditSnapshot) -> None:
    s.payments.ledger.pop(2)


def _failed_holds_stock(s: AuditSnapshot) -> None:
    s.inventory.reservations[1].state = ReservationState.HELD
    s.inventory.stock[0] = StockRow(
        product_id="p-001", initial=10, available=4, reserved=4, committed=2
    )


def _stuck_pending(s: AuditSnapshot) -> None:
    s.orders.orders[2].created_at = NOW - 31


def _stuck_charge(s: AuditSnapshot) -> None:
    s.payments.charges.append(charge("ch9", "o-wip", ChargeState.PENDING))
    s.payments.charges[-1].created_at = NOW - 60


def _orphan_charge(s: AuditSnapshot) -> None:
    s.payments.charges.append(charge("ch7", "o-ghost", ChargeState.DECLINED))


def _orphan_reservation(s: AuditSnapshot) -> None:
    s.inventory.reservations.append(reservation(9, "o-ghost", ReservationState.RELEASED))


def _double_charge(s: AuditSnapshot) -> None:
    s.payments.charges.append(charge("ch3", "o-bad", ChargeState.REFUNDED))


DAMAGE: list[tuple[Callable[[AuditSnapshot], None], str, str]] = [
    (_lose_stock, "stock_conserved", "product p-001"),
    (_negative_stock, "stock_conserved", "product p-001"),
    (_reserved_counter_drift, "stock_conserved", "product p-001"),
    (_confirmed_unpaid, "confirmed_orders_settled", "order o-ok"),
    (_confirmed_wrong_amount, "confirmed_orders_settled", "order o-ok"),
    (_confirmed_not_committed, "confirmed_orders_settled", "order o-ok"),
    (_failed_kept_money, "failed_orders_settled", "order o-bad"),
    (_failed_holds_stock, "failed_orders_settled", "order o-bad"),
    (_stuck_pending, "nothing_stuck", "order o-wip"),
    (_stuck_charge, "nothing_stuck", "order o-wip"),
    (_orphan_charge, "no_orphans", "order o-ghost"),
    (_orphan_reservation, "no_orphans", "order o-ghost"),
    (_double_charge, "no_double_charge", "order o-bad"),
]


@pytest.mark.parametrize(
    ("damage", "check", "subject"), DAMAGE, ids=[d[0].__name__ for d in DAMAGE]
)
def test_each_kind_of_damage_is_caught_and_named(
    damage: Callable[[AuditSnapshot], None], check: str, subject: str
) -> None:
    snap = consistent()
    damage(snap)
    report = run_checks(snap)
    assert not report.ok
    hits = [v for v in report.violations if v.check == check]
    assert hits, report.violations
    assert all(v.subject == subject for v in hits), hits


def test_an_order_placed_between_snapshots_is_not_an_orphan() -> None:
    snap = consistent()
    late = order("o-late", OrderStatus.PENDING)
    snap.inventory.reservations.append(reservation(4, "o-late", ReservationState.RELEASED))
    snap.orders_after = snap.orders.model_copy(
        update={"orders": [*snap.orders.orders, late]}, deep=True
    )
    assert run_checks(snap).ok
