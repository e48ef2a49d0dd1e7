"""What the soak checks, as pure functions over what the clients saw and the stores' snapshots.

The clients' view (``CheckoutRecord``: one per idempotency key, every answer it got) is held
against an audit snapshot (``services.audit_checks.AuditSnapshot``) taken after convergence:

* ``one_order_per_key`` — every answer to one key named the same order;
* ``confirmations_kept`` — every order a client was told was confirmed is stored once, as
  confirmed, with the items the client asked for, charged exactly once for its total, its stock
  committed;
* ``failures_settled`` — every order a client was told had failed is stored as failed, refunded
  (net charge zero) and holds or has committed no stock;
* ``answers_final`` — every order a client heard of is no longer pending;
* ``stock_matches_orders`` — for every product, the units committed equal the units of the
  confirmed orders and no unit is still reserved.

``convergence_seconds`` reads the convergence time from polled samples; ``fault_counts``
summarises the nemesis. Tests feed crafted data; ``chaos.soak.run`` feeds the real thing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from services.audit_checks import AuditSnapshot, CheckResult, Violation
from services.inventory.api import ReservationState
from services.orders.api import Order, OrderStatus
from services.payments.api import ChargeState

__all__ = [
    "Answer",
    "CheckoutRecord",
    "Sample",
    "convergence_seconds",
    "cross_check",
    "told",
]


@dataclass(frozen=True)
class Answer:
    """One answer a client got for a checkout (or its absence)."""

    at: float
    http_status: int | None
    """None: no HTTP answer at all (connection refused or reset, timeout)."""
    order_id: str | None = None
    status: str | None = None
    """The order's status in the answer: ``pending``, ``confirmed`` or ``failed``."""
    reason: str | None = None


@dataclass
class CheckoutRecord:
    """One checkout as its client saw it: the key, what was asked, every answer."""

    key: str
    client: int
    items: dict[str, int]
    answers: list[Answer] = field(default_factory=list)
    duplicated: bool = False
    """Sent again on purpose with the same key and body after an answer."""

    def order_ids(self) -> set[str]:
        return {a.order_id for a in self.answers if a.order_id}


def told(record: CheckoutRecord) -> str | None:
    """The most definite status the client was told: confirmed/failed beat pending."""
    statuses = {a.status for a in record.answers if a.order_id and a.status}
    for status in ("confirmed", "failed", "pending"):
        if status in statuses:
            return status
    return None


def _result(name: str, title: str, checked: int) -> CheckResult:
    return CheckResult(name=name, title=title, checked=checked)


def _bad(result: CheckResult, subject: str, message: str) -> None:
    result.violations.append(Violation(check=result.name, subject=subject, message=message))


def check_one_order_per_key(records: Sequence[CheckoutRecord]) -> CheckResult:
    result = _result(
        "one_order_per_key",
        "every answer to one idempotency key named the same order",
        len(records),
    )
    for r in records:
        ids = r.order_ids()
        if len(ids) > 1:
            _bad(
                result, f"key {r.key}", f"answered with {len(ids)} orders: {', '.join(sorted(ids))}"
            )
    return result


def _net_paid(snap: AuditSnapshot) -> dict[str, int]:
    net: dict[str, int] = defaultdict(int)
    for e in snap.payments.ledger:
        net[e.order_id] += e.amount_cents
    return net


def _units(snap: AuditSnapshot, state: ReservationState) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for res in snap.inventory.reservations:
        if res.state is state:
            for item in res.items:
                out[res.order_id][item.product_id] += item.quantity
    return out


def _stored(snap: AuditSnapshot) -> tuple[dict[str, Order], Counter[str]]:
    orders = snap.latest_orders.orders
    return {o.order_id: o for o in orders}, Counter(o.order_id for o in orders)


def _fmt(items: Mapping[str, int]) -> str:
    return ", ".join(f"{p}x{q}" for p, q in sorted(items.items())) or "nothing"


def check_confirmations_kept(records: Sequence[CheckoutRecord], snap: AuditSnapshot) -> CheckResult:
    confirmed = [r for r in records if told(r) == "confirmed"]
    result = _result(
        "confirmations_kept",
        "every order a client was told is confirmed: stored once as confirmed, with its items,"
        " charged once for its total, its stock committed",
        len(confirmed),
    )
    stored, copies = _stored(snap)
    net = _net_paid(snap)
    charges: dict[str, int] = defaultdict(int)
    for c in snap.payments.charges:
        if c.state in (ChargeState.SUCCEEDED, ChargeState.REFUNDED):
            charges[c.order_id] += 1
    committed = _units(snap, ReservationState.COMMITTED)
    for r in confirmed:
        for order_id in sorted(r.order_ids()):
            subject = f"order {order_id} (key {r.key})"
            order = stored.get(order_id)
            if order is None:
                _bad(
                    result, subject, "the client was told it is confirmed; orders does not know it"
                )
                continue
            if copies[order_id] != 1:
                _bad(result, subject, f"stored {copies[order_id]} times")
            if order.status is not OrderStatus.CONFIRMED:
                _bad(
                    result,
                    subject,
                    f"the client was told it is confirmed; it is stored as {order.status.value}"
                    f" ({order.failure_reason or order.step})",
                )
            asked = dict(r.items)
            got = {i.product_id: i.quantity for i in order.items}
            if got != asked:
                _bad(
                    result, subject, f"stored with {_fmt(got)}, the client asked for {_fmt(asked)}"
                )
            if charges.get(order_id, 0) != 1:
                _bad(result, subject, f"charged {charges.get(order_id, 0)} times, expected once")
            if net.get(order_id, 0) != order.total_cents:
                _bad(
                    result,
                    subject,
                    f"net charge {net.get(order_id, 0)} != total {order.total_cents}",
                )
            if dict(committed.get(order_id, {})) != got:
                _bad(
                    result,
                    subject,
                    f"committed {_fmt(committed.get(order_id, {}))}, expected {_fmt(got)}",
                )
    return result


def check_failures_settled(records: Sequence[CheckoutRecord], snap: AuditSnapshot) -> CheckResult:
    failed = [r for r in records if told(r) == "failed"]
    result = _result(
        "failures_settled",
        "every order a client was told has failed: stored as failed, refunded, no stock held",
        len(failed),
    )
    stored, _ = _stored(snap)
    net = _net_paid(snap)
    held = _units(snap, ReservationState.HELD)
    committed = _units(snap, ReservationState.COMMITTED)
    for r in failed:
        for order_id in sorted(r.order_ids()):
            subject = f"order {order_id} (key {r.key})"
            order = stored.get(order_id)
            if order is None:
                _bad(result, subject, "the client was told it failed; orders does not know it")
                continue
            if order.status is not OrderStatus.FAILED:
                _bad(
                    result,
                    subject,
                    f"the client was told it failed; it is stored as {order.status.value}",
                )
            if net.get(order_id, 0) != 0:
                _bad(result, subject, f"net charge {net[order_id]} although it failed")
            for label, table in (("holds", held), ("committed", committed)):
                if table.get(order_id):
                    _bad(result, subject, f"{label} {_fmt(table[order_id])} although it failed")
    return result


def check_answers_final(records: Sequence[CheckoutRecord], snap: AuditSnapshot) -> CheckResult:
    heard = sorted({(oid, r.key) for r in records for oid in r.order_ids()})
    result = _result(
        "answers_final", "every order a client heard of is confirmed or failed now", len(heard)
    )
    stored, _ = _stored(snap)
    for order_id, key in heard:
        order = stored.get(order_id)
        if order is None:
            if not any(told(r) in ("confirmed", "failed") for r in records if r.key == key):
                _bad(result, f"order {order_id} (key {key})", "orders does not know it")
        elif order.status is OrderStatus.PENDING:
            _bad(result, f"order {order_id} (key {key})", f"still pending at step {order.step!r}")
    return result


def check_stock_matches_orders(snap: AuditSnapshot) -> CheckResult:
    stock = snap.inventory.stock
    result = _result(
        "stock_matches_orders",
        "per product: units committed = units of confirmed orders, nothing left reserved,"
        " initial = available + committed",
        len(stock),
    )
    demand: dict[str, int] = defaultdict(int)
    for o in snap.latest_orders.orders:
        if o.status is OrderStatus.CONFIRMED:
            for i in o.items:
                demand[i.product_id] += i.quantity
    for row in stock:
        subject = f"product {row.product_id}"
        if row.committed != demand.get(row.product_id, 0):
            _bad(
                result,
                subject,
                f"committed {row.committed} != {demand.get(row.product_id, 0)} units in confirmed"
                " orders",
            )
        if row.reserved != 0:
            _bad(result, subject, f"{row.reserved} units still reserved after convergence")
        if row.initial != row.available + row.reserved + row.committed:
            _bad(
                result,
                subject,
                f"initial {row.initial} != available {row.available} + reserved {row.reserved}"
                f" + committed {row.committed}",
            )
    return result


def cross_check(records: Sequence[CheckoutRecord], snap: AuditSnapshot) -> list[CheckResult]:
    """Every clients'-view check over one snapshot taken after convergence."""
    return [
        check_one_order_per_key(records),
        check_confirmations_kept(records, snap),
        check_failures_settled(records, snap),
        check_answers_final(records, snap),
        check_stock_matches_orders(snap),
    ]


@dataclass(frozen=True)
class Sample:
    """One convergence poll: when, instances not ready, orders and charges still pending."""

    at: float
    not_ready: tuple[str, ...]
    pending_orders: int | None
    """None: orders could not be asked."""
    pending_charges: int | None = 0

    @property
    def settled(self) -> bool:
        return not self.not_ready and self.pending_orders == 0 and self.pending_charges == 0


def convergence_seconds(samples: Iterable[Sample], *, since: float) -> float | None:
    """Seconds from ``since`` (the last fault's end) to the first settled sample after it that
    stays settled until the last sample; None if the samples never settle for good."""
    converged: float | None = None
    for s in sorted(samples, key=lambda s: s.at):
        if s.at < since:
            continue
        if s.settled:
            if converged is None:
                converged = s.at
        else:
            converged = None
    return None if converged is None else round(max(converged - since, 0.0), 3)
