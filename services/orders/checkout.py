"""The checkout: validate and price an order, record it, then drive its saga to the end.

``Checkout.drive`` performs the action ``saga.next_action`` names for the stored step through a
``SagaUpstreams`` (inventory and payments over RPC in production, fakes in unit tests), stores
the transition ``saga.transition`` picks, and goes on until the saga is over or must wait for
the recovery loop. Every transition is stored before the next action starts, and the crash hook
(``TESTBED_CRASH_AFTER=<step>``) fires right after a step is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from observability.logs import get_logger
from services.common.consistency import Consistency
from services.common.crash import CrashSwitch
from services.common.errors import InvalidArgument
from services.common.hashing import fingerprint
from services.common.types import MAX_AMOUNT_CENTS
from services.orders.api import Order, OrderItem, PlaceOrderRequest
from services.orders.saga import TERMINAL, Action, Outcome, Step, next_action, transition
from services.orders.store import OrdersStore

_log = get_logger("services.orders.checkout")


@dataclass(frozen=True)
class StepResult:
    outcome: Outcome
    reason: str = ""


class SagaUpstreams(Protocol):
    """The remote effects of the saga; each call is idempotent for one order in saga mode."""

    async def reserve(self, order: Order) -> StepResult: ...

    async def charge(self, order: Order) -> StepResult: ...

    async def commit(self, order: Order) -> StepResult: ...

    async def compensate(self, order: Order) -> StepResult: ...


class PriceLookup(Protocol):
    async def prices(self, product_ids: Sequence[str]) -> Mapping[str, int]:
        """Current unit price of each product; ``InvalidArgument`` naming unknown ones."""
        ...


@dataclass(frozen=True, kw_only=True)
class SagaSettings:
    saga_timeout: float = 30.0
    """How long an order may stay pending; the audit holds orders to it."""
    reservation_ttl: float = 120.0
    lease_seconds: float = 15.0
    """How long a driver owns a saga before recovery may take it over."""
    retry_after: float = 1.0
    """After an uncertain outcome, how soon recovery tries again (doubled at each failed try)."""
    retry_max: float = 4.0
    """The cap of that backoff: a waiting saga is tried again at least this often."""
    recovery_batch: int = 8
    """At most this many sagas driven by recovery at once, per process: after a storm hundreds
    of sagas may wait, and driving them all at once would stampede the upstreams as they come
    back (timeouts, breakers opening again); a few at a time, each taking well under a second
    once the upstreams answer, drains them faster."""


class SagaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.transitions = Counter(
            "orders_saga_transitions_total",
            "Saga steps stored, by the step reached",
            ["step"],
            registry=registry,
        )
        self.recovered = Counter(
            "orders_saga_recovered_total",
            "Sagas taken over by the recovery loop",
            registry=registry,
        )


class Checkout:
    """Places orders and drives their sagas; one per process."""

    def __init__(
        self,
        store: OrdersStore,
        upstreams: SagaUpstreams,
        prices: PriceLookup,
        *,
        settings: SagaSettings,
        consistency: Consistency,
        crash: CrashSwitch,
        owner: str,
        metrics: SagaMetrics | None = None,
    ) -> None:
        self.store = store
        self.upstreams = upstreams
        self.price_lookup = prices
        self.settings = settings
        self.consistency = consistency
        self.crash = crash
        self.owner = owner
        self.metrics = metrics
        self.driving: set[str] = set()
        self.recovering: set[asyncio.Task[Order]] = set()
        """Sagas this process took over, each driven in a task of its own."""

    async def place(self, request: PlaceOrderRequest, *, idempotency_key: str | None) -> Order:
        """Validate, price and record the order (nothing is written if it is refused)."""
        ids = [line.product_id for line in request.items]
        prices = await self.price_lookup.prices(ids)
        items = [
            OrderItem(
                product_id=line.product_id,
                quantity=line.quantity,
                unit_price_cents=prices[line.product_id],
            )
            for line in request.items
        ]
        total = sum(i.quantity * i.unit_price_cents for i in items)
        if total > MAX_AMOUNT_CENTS:
            raise InvalidArgument(
                f"order total {total / 100:.2f} exceeds the limit of {MAX_AMOUNT_CENTS / 100:.2f};"
                " split it into smaller orders"
            )
        key = idempotency_key if self.consistency is Consistency.SAGA else None
        order, created = await self.store.create(
            order_id=f"o-{uuid.uuid4().hex[:16]}",
            customer_id=request.customer_id,
            items=items,
            idempotency_key=key,
            request_hash=fingerprint(request.model_dump(mode="json")),
            owner=self.owner,
            lease_seconds=self.settings.lease_seconds,
        )
        if created:
            self._stored(order.order_id, Step.STARTED)
        return order

    def _stored(self, order_id: str, step: Step) -> None:
        if self.metrics is not None:
            self.metrics.transitions.labels(step.value).inc()
        _log.info("saga_step", order_id=order_id, step=step.value)
        self.crash.reached(step.value)

    async def _perform(self, action: Action, order: Order) -> StepResult:
        if action is Action.RESERVE:
            return await self.upstreams.reserve(order)
        if action is Action.CHARGE:
            return await self.upstreams.charge(order)
        if action is Action.COMMIT:
            return await self.upstreams.commit(order)
        return await self.upstreams.compensate(order)

    async def drive(self, order: Order) -> Order:
        """Run the saga of ``order`` (owned by this process) until it ends or must wait."""
        if order.order_id in self.driving:
            return order
        self.driving.add(order.order_id)
        try:
            step = Step(order.step)
            while step not in TERMINAL:
                action = next_action(step)
                assert action is not None
                result = await self._perform(action, order)
                new = transition(step, result.outcome, self.consistency)
                if new is step:
                    # wait: let the recovery loop (this or another instance) try again soon
                    _log.warning(
                        "saga_waiting",
                        order_id=order.order_id,
                        step=step.value,
                        reason=result.reason,
                    )
                    await self.store.back_off(
                        order.order_id,
                        owner=self.owner,
                        base=self.settings.retry_after,
                        cap=self.settings.retry_max,
                    )
                    break
                reason = result.reason if new in (Step.COMPENSATING, Step.FAILED) else ""
                moved = await self.store.advance(
                    order.order_id,
                    from_step=step,
                    to_step=new,
                    owner=self.owner,
                    lease_seconds=self.settings.lease_seconds,
                    reason=reason,
                )
                if not moved:
                    _log.warning("saga_lost_lease", order_id=order.order_id, step=step.value)
                    break
                self._stored(order.order_id, new)
                if new is Step.COMPENSATING:
                    _log.info("saga_compensating", order_id=order.order_id, reason=reason)
                step = new
        finally:
            self.driving.discard(order.order_id)
        latest = await self.store.get(order.order_id)
        assert latest is not None
        return latest

    async def recover_once(self) -> int:
        """Take over every saga whose driver is gone and start driving each in a task of its own
        (a slow one never holds up the others or the next pass); returns how many were taken."""
        if self.consistency is not Consistency.SAGA:
            return 0
        room = self.settings.recovery_batch - len(self.recovering)
        if room <= 0:
            return 0
        stale = await self.store.claim_stale(
            owner=self.owner, lease_seconds=self.settings.lease_seconds, limit=room
        )
        stale = [o for o in stale if o.order_id not in self.driving]
        for order in stale:
            if self.metrics is not None:
                self.metrics.recovered.inc()
            _log.info("saga_recovering", order_id=order.order_id, step=order.step)
            task = asyncio.create_task(self._recover(order), name=f"recover-{order.order_id}")
            self.recovering.add(task)
            task.add_done_callback(self.recovering.discard)
        return len(stale)

    async def _recover(self, order: Order) -> Order:
        try:
            return await self.drive(order)
        except Exception as e:
            # e.g. the database was busy: let recovery try again soon rather than at lease end
            _log.error("saga_recovery_failed", order_id=order.order_id, error=repr(e))
            with contextlib.suppress(Exception):
                await self.store.back_off(
                    order.order_id,
                    owner=self.owner,
                    base=self.settings.retry_after,
                    cap=self.settings.retry_max,
                )
            return order

    async def settle(self) -> None:
        """Wait for every saga recovery has started (tests, shutdown)."""
        while self.recovering:
            await asyncio.gather(*list(self.recovering), return_exceptions=True)

    async def close(self) -> None:
        """Stop driving recovered sagas (their leases let the next run take them over)."""
        for task in list(self.recovering):
            task.cancel()
        await asyncio.gather(*list(self.recovering), return_exceptions=True)
