"""The data-consistency checks of the audit, as pure functions over the services' snapshots.

Each check takes the snapshots (pydantic models answered by the services' Audit RPCs) and returns
a ``CheckResult`` naming every violation with the order or product involved. ``services.audit``
gathers the snapshots over RPC and calls ``run_checks``; tests feed crafted snapshots.

Snapshots of different services cannot be taken at one instant, so the gatherer takes orders
twice: once before inventory and payments (``orders``), once after (``orders_after``). An order
that is terminal in the first snapshot did all its work on inventory and payments before it
became terminal, so those later snapshots must show it; a reservation or charge made by an order
placed meanwhile is matched against the second snapshot, which knows that order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from pydantic import BaseModel, Field

from services.catalog.api import CatalogAudit
from services.inventory.api import InventoryAudit, ReservationState
from services.orders.api import Order, OrdersAudit, OrderStatus
from services.payments.api import ChargeState, PaymentsAudit


class Violation(BaseModel):
    check: str
    subject: str  # "order o-12", "product p-007", "charge ch_..."
    message: str


class CheckResult(BaseModel):
    name: str
    title: str
    checked: int
    violations: list[Violation] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


class AuditSnapshot(BaseModel):
    orders: OrdersAudit
    inventory: InventoryAudit
    payments: PaymentsAudit
    orders_after: OrdersAudit | None = None
    catalog: CatalogAudit | None = None

    @property
    def latest_orders(self) -> OrdersAudit:
        return self.orders_after or self.orders


class AuditReport(BaseModel):
    checks: list[CheckResult] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    """Snapshots that could not be gathered (the audit cannot pass without them)."""
    counts: dict[str, int] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def violations(self) -> list[Violation]:
        return [v for c in self.checks for v in c.violations]


def _net_paid(payments: PaymentsAudit) -> dict[str, int]:
    net: dict[str, int] = defaultdict(int)
    for entry in payments.ledger:
        net[entry.order_id] += entry.amount_cents
    return net


def _held_and_committed(
    inventory: InventoryAudit,
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Per order: product -> quantity still held, and product -> quantity committed."""
    held: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    committed: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in inventory.reservations:
        target = (
            held
            if r.state is ReservationState.HELD
            else committed
            if r.state is ReservationState.COMMITTED
            else None
        )
        if target is None:
            continue
        for item in r.items:
            target[r.order_id][item.product_id] += item.quantity
    return held, committed


def _fmt(items: dict[str, int]) -> str:
    return ", ".join(f"{p}x{q}" for p, q in sorted(items.items())) or "nothing"


def check_stock_conserved(snap: AuditSnapshot) -> CheckResult:
    name = "stock_conserved"
    result = CheckResult(
        name=name,
        title="stock conserved: initial = available + reserved + committed, never negative",
        checked=len(snap.inventory.stock),
    )
    held_by_product: dict[str, int] = defaultdict(int)
    committed_by_product: dict[str, int] = defaultdict(int)
    for r in snap.inventory.reservations:
        for item in r.items:
            if r.state is ReservationState.HELD:
                held_by_product[item.product_id] += item.quantity
            elif r.state is ReservationState.COMMITTED:
                committed_by_product[item.product_id] += item.quantity
    for row in snap.inventory.stock:
        subject = f"product {row.product_id}"
        total = row.available + row.reserved + row.committed
        if total != row.initial:
            result.violations.append(
                Violation(
                    check=name,
                    subject=subject,
                    message=f"initial {row.initial} != available {row.available}"
                    f" + reserved {row.reserved} + committed {row.committed} (= {total})",
                )
            )
        negative = [
            f"{field} {value}"
            for field, value in (
                ("available", row.available),
                ("reserved", row.reserved),
                ("committed", row.committed),
            )
            if value < 0
        ]
        if negative:
            result.violations.append(
                Violation(check=name, subject=subject, message="negative " + ", ".join(negative))
            )
        if row.reserved != held_by_product.get(row.product_id, 0):
            result.violations.append(
                Violation(
                    check=name,
                    subject=subject,
                    message=f"reserved counter {row.reserved} != units in held reservations"
                    f" {held_by_product.get(row.product_id, 0)}",
                )
            )
        if row.committed != committed_by_product.get(row.product_id, 0):
            result.violations.append(
                Violation(
                    check=name,
                    subject=subject,
                    message=f"committed counter {row.committed} != units in committed"
                    f" reservations {committed_by_product.get(row.product_id, 0)}",
                )
            )
    return result


def _orders_with(snap: AuditSnapshot, status: OrderStatus) -> list[Order]:
    return [o for o in snap.orders.orders if o.status is status]


def check_confirmed_orders(snap: AuditSnapshot) -> CheckResult:
    name = "confirmed_orders_settled"
    confirmed = _orders_with(snap, OrderStatus.CONFIRMED)
    result = CheckResult(
        name=name,
        title="every confirmed order: one net charge equal to its total, its items committed",
        checked=len(confirmed),
    )
    net = _net_paid(snap.payments)
    live_charges: dict[str, int] = defaultdict(int)
    for c in snap.payments.charges:
        if c.state is ChargeState.SUCCEEDED:
            live_charges[c.order_id] += 1
    held, committed = _held_and_committed(snap.inventory)
    for order in confirmed:
        subject = f"order {order.order_id}"

        def bad(message: str, subject: str = subject) -> None:
            result.violations.append(Violation(check=name, subject=subject, message=message))

        if live_charges.get(order.order_id, 0) != 1:
            bad(f"has {live_charges.get(order.order_id, 0)} standing charges, expected exactly 1")
        paid = net.get(order.order_id, 0)
        if paid != order.total_cents:
            bad(f"net charge {paid} != order total {order.total_cents}")
        wanted = {i.product_id: i.quantity for i in order.items}
        got = dict(committed.get(order.order_id, {}))
        if got != wanted:
            bad(f"committed {_fmt(got)}, expected {_fmt(wanted)}")
        still_held = dict(held.get(order.order_id, {}))
        if still_held:
            bad(f"still holds reservations: {_fmt(still_held)}")
    return result


def check_failed_orders(snap: AuditSnapshot) -> CheckResult:
    name = "failed_orders_settled"
    failed = _orders_with(snap, OrderStatus.FAILED)
    result = CheckResult(
        name=name,
        title="every failed order: net charge zero, no reservation held or committed",
        checked=len(failed),
    )
    net = _net_paid(snap.payments)
    held, committed = _held_and_committed(snap.inventory)
    for order in failed:
        subject = f"order {order.order_id}"
        paid = net.get(order.order_id, 0)
        if paid != 0:
            result.violations.append(
                Violation(check=name, subject=subject, message=f"net charge {paid}, expected 0")
            )
        for label, table in (("holds", held), ("committed", committed)):
            items = dict(table.get(order.order_id, {}))
            if items:
                result.violations.append(
                    Violation(
                        check=name,
                        subject=subject,
                        message=f"{label} stock although it failed: {_fmt(items)}",
                    )
                )
    return result


def check_nothing_stuck(snap: AuditSnapshot) -> CheckResult:
    name = "nothing_stuck"
    orders = snap.latest_orders
    timeout = orders.saga_timeout_seconds
    result = CheckResult(
        name=name,
        title=f"no order (or charge) pending longer than the saga timeout ({timeout:g}s)",
        checked=len(orders.orders) + len(snap.payments.charges),
    )
    for order in orders.orders:
        age = orders.taken_at - order.created_at
        if order.status is OrderStatus.PENDING and age > timeout:
            result.violations.append(
                Violation(
                    check=name,
                    subject=f"order {order.order_id}",
                    message=f"pending at step {order.step!r} for {age:.1f}s",
                )
            )
    for charge in snap.payments.charges:
        age = snap.payments.taken_at - charge.created_at
        if charge.state is ChargeState.PENDING and age > timeout:
            result.violations.append(
                Violation(
                    check=name,
                    subject=f"order {charge.order_id}",
                    message=f"charge {charge.charge_id} unresolved for {age:.1f}s",
                )
            )
    return result


def check_no_orphans(snap: AuditSnapshot) -> CheckResult:
    name = "no_orphans"
    known = {o.order_id for o in snap.latest_orders.orders} | {
        o.order_id for o in snap.orders.orders
    }
    result = CheckResult(
        name=name,
        title="no charge or reservation for an order that orders does not know",
        checked=len(snap.inventory.reservations) + len(snap.payments.charges),
    )
    seen: set[tuple[str, str]] = set()

    def orphan(order_id: str, what: str) -> None:
        if order_id not in known and (order_id, what) not in seen:
            seen.add((order_id, what))
            result.violations.append(
                Violation(
                    check=name,
                    subject=f"order {order_id}",
                    message=f"{what} exists but orders does not know the order",
                )
            )

    for r in snap.inventory.reservations:
        if r.items:  # a tombstone (released before reserved) holds nothing
            orphan(r.order_id, "reservation")
    for c in snap.payments.charges:
        if c.state is not ChargeState.VOIDED:
            orphan(c.order_id, "charge")
    for e in snap.payments.ledger:
        orphan(e.order_id, "ledger entry")
    return result


def check_no_double_charge(snap: AuditSnapshot) -> CheckResult:
    name = "no_double_charge"
    took_money: dict[str, list[str]] = defaultdict(list)
    for c in snap.payments.charges:
        if c.state in (ChargeState.SUCCEEDED, ChargeState.REFUNDED):
            took_money[c.order_id].append(c.charge_id)
    result = CheckResult(name=name, title="no order charged twice", checked=len(took_money))
    for order_id, charges in sorted(took_money.items()):
        if len(charges) > 1:
            result.violations.append(
                Violation(
                    check=name,
                    subject=f"order {order_id}",
                    message=f"charged {len(charges)} times ({', '.join(charges)})",
                )
            )
    return result


CHECKS: tuple[Callable[[AuditSnapshot], CheckResult], ...] = (
    check_stock_conserved,
    check_confirmed_orders,
    check_failed_orders,
    check_nothing_stuck,
    check_no_orphans,
    check_no_double_charge,
)


def count_statuses(orders: Iterable[Order]) -> dict[str, int]:
    counts = {s.value: 0 for s in OrderStatus}
    for o in orders:
        counts[o.status.value] += 1
    return counts


def run_checks(snap: AuditSnapshot) -> AuditReport:
    """Every check over one snapshot, with order counts by status."""
    counts = {f"orders_{k}": v for k, v in count_statuses(snap.latest_orders.orders).items()}
    counts["charges"] = len(snap.payments.charges)
    counts["reservations"] = len(snap.inventory.reservations)
    if snap.catalog is not None:
        counts["products"] = len(snap.catalog.products)
    return AuditReport(checks=[check(snap) for check in CHECKS], counts=counts)
