"""Saga recovery over a real orders database with scripted upstreams: another instance takes
over a dead driver's sagas when its lease runs out, a restarted instance takes its own back at
once, a flapping upstream is retried with bounded backoff, and nothing stays compensating once
the upstreams answer again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.common.consistency import Consistency
from services.common.crash import CrashSwitch
from services.common.db import Database
from services.orders.api import Order, OrderLine, PlaceOrderRequest
from services.orders.checkout import Checkout, SagaSettings, StepResult
from services.orders.saga import Outcome, Step
from services.orders.store import MIGRATIONS, OrdersStore


@dataclass
class ScriptedUpstreams:
    """Answers each action with the next scripted outcome (then OK), recording every call."""

    script: dict[str, list[Outcome]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def _next(self, action: str, order: Order) -> StepResult:
        self.calls.append((action, order.order_id))
        queue = self.script.get(action, [])
        outcome = queue.pop(0) if queue else Outcome.OK
        return StepResult(outcome, f"{action}: {outcome.value}")

    async def reserve(self, order: Order) -> StepResult:
        return self._next("reserve", order)

    async def charge(self, order: Order) -> StepResult:
        return self._next("charge", order)

    async def commit(self, order: Order) -> StepResult:
        return self._next("commit", order)

    async def compensate(self, order: Order) -> StepResult:
        return self._next("compensate", order)


class Prices:
    async def prices(self, product_ids: Sequence[str]) -> Mapping[str, int]:
        return dict.fromkeys(product_ids, 100)


SETTINGS = SagaSettings(lease_seconds=0.5, retry_after=0.05, retry_max=0.2)


def checkout(store: OrdersStore, upstreams: ScriptedUpstreams, owner: str) -> Checkout:
    return Checkout(
        store,
        upstreams,
        Prices(),
        settings=SETTINGS,
        consistency=Consistency.SAGA,
        crash=CrashSwitch(),
        owner=owner,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[OrdersStore]:
    db = await Database.open(tmp_path / "orders.sqlite3", MIGRATIONS)
    try:
        yield OrdersStore(db)
    finally:
        await db.close()


REQUEST = PlaceOrderRequest(customer_id="c", items=[OrderLine(product_id="p-001", quantity=1)])


async def until_over(store: OrdersStore, checkouts: Sequence[Checkout], within: float) -> Order:
    """Run recovery passes of ``checkouts`` until the one order is over; returns it."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for c in checkouts:
            await c.recover_once()
            await c.settle()
        (order,) = await store.all_orders()
        if order.step in (Step.CONFIRMED, Step.FAILED):
            return order
        await asyncio.sleep(0.05)
    (order,) = await store.all_orders()
    return order


async def test_another_instance_takes_over_when_the_lease_runs_out(store: OrdersStore) -> None:
    dead = checkout(store, ScriptedUpstreams(), "orders-1/aaaa")
    order = await dead.place(REQUEST, idempotency_key="k1")  # placed, never driven: it died
    other = checkout(store, ScriptedUpstreams(), "orders-2/bbbb")
    assert await other.recover_once() == 0, "the lease still runs"
    done = await until_over(store, [other], within=5.0)
    assert done.order_id == order.order_id
    assert done.step == Step.CONFIRMED
    history = await store.history(order.order_id)
    assert ("started", "recovery took over") in history


async def test_a_restarted_instance_takes_its_own_sagas_back_at_once(store: OrdersStore) -> None:
    first_run = checkout(store, ScriptedUpstreams(), "orders-1/aaaa")
    await first_run.place(REQUEST, idempotency_key="k1")
    neighbour = checkout(store, ScriptedUpstreams(), "orders-10/cccc")
    assert await neighbour.recover_once() == 0, "orders-10 is not orders-1"
    second_run = checkout(store, ScriptedUpstreams(), "orders-1/bbbb")
    assert await second_run.recover_once() == 1, "no need to wait for the lease"
    await second_run.settle()
    (order,) = await store.all_orders()
    assert order.step == Step.CONFIRMED


async def test_flapping_upstreams_are_retried_with_backoff_until_compensated(
    store: OrdersStore,
) -> None:
    flaky = ScriptedUpstreams(
        script={
            "charge": [Outcome.UNCERTAIN],
            "compensate": [Outcome.UNCERTAIN] * 6,
        }
    )
    c = checkout(store, flaky, "orders-1/aaaa")
    order = await c.place(REQUEST, idempotency_key="k1")
    order = await c.drive(order)
    assert order.step == Step.COMPENSATING
    done = await until_over(store, [c], within=10.0)
    assert done.step == Step.FAILED
    compensations = [a for a, _ in flaky.calls if a == "compensate"]
    assert len(compensations) == 7
    # the waits grew: 0.05, 0.1, 0.2 (the cap), 0.2, ... — never faster than the first
    log = await store.history(order.order_id)
    assert log[-1][0] == "failed"


async def test_backoff_doubles_up_to_its_cap(store: OrdersStore) -> None:
    c = checkout(store, ScriptedUpstreams(), "orders-1/aaaa")
    order = await c.place(REQUEST, idempotency_key="k1")
    delays = [
        await store.back_off(order.order_id, owner="orders-1/aaaa", base=1.0, cap=4.0)
        for _ in range(5)
    ]
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert await store.back_off(order.order_id, owner="orders-2/x", base=1, cap=4) is None
    moved = await store.advance(
        order.order_id,
        from_step=Step.STARTED,
        to_step=Step.RESERVED,
        owner="orders-1/aaaa",
        lease_seconds=5,
    )
    assert moved
    again = await store.back_off(order.order_id, owner="orders-1/aaaa", base=1.0, cap=4.0)
    assert again == 1.0, "a step forward resets the backoff"
