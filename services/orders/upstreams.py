"""The saga's remote effects over RPC: inventory and payments (and catalog for prices).

Each RPC error is sorted into the saga's outcomes: a definite refusal (the upstream answered
no: out of stock, declined, expired) or an uncertain outcome (no answer: the call may or may
not have taken effect). In ``saga`` mode every call carries an idempotency key derived from the
order id, so the RPC client may retry it and the recovery loop may repeat it; in ``naive`` mode
none does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mesh.rpc import Code, RpcClient, RpcError
from services.catalog import api as catalog_api
from services.common.consistency import Consistency
from services.common.errors import InvalidArgument, Unavailable, UnknownProduct
from services.inventory import api as inventory_api
from services.orders.api import Order
from services.orders.checkout import StepResult
from services.orders.saga import Outcome
from services.payments import api as payments_api

REFUSALS = frozenset(
    {Code.FAILED_PRECONDITION, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.ALREADY_EXISTS}
)


def _from_error(what: str, error: RpcError) -> StepResult:
    outcome = Outcome.REFUSED if error.code in REFUSALS else Outcome.UNCERTAIN
    return StepResult(outcome, f"{what}: {error.message or error.code.value}")


def charge_key(order_id: str) -> str:
    return f"charge:{order_id}"


@dataclass
class RpcSagaUpstreams:
    """``SagaUpstreams`` over ``RpcClient``s to inventory and payments."""

    inventory: RpcClient
    payments: RpcClient
    consistency: Consistency
    reservation_ttl: float
    call_timeout: float
    charge_timeout: float

    def _key(self, prefix: str, order_id: str) -> str | None:
        return f"{prefix}:{order_id}" if self.consistency is Consistency.SAGA else None

    async def reserve(self, order: Order) -> StepResult:
        request = inventory_api.ReserveRequest(
            order_id=order.order_id,
            items=[
                inventory_api.Item(product_id=i.product_id, quantity=i.quantity)
                for i in order.items
            ],
            ttl_seconds=self.reservation_ttl,
        )
        try:
            answer = await self.inventory.call(
                inventory_api.RESERVE,
                request,
                inventory_api.ReservationResponse,
                timeout=self.call_timeout,
                idempotency_key=self._key("reserve", order.order_id),
            )
        except RpcError as e:
            return _from_error("reserve", e)
        state = answer.reservation.state
        if state is not inventory_api.ReservationState.HELD:
            return StepResult(Outcome.REFUSED, f"reserve: the reservation is {state.value}")
        return StepResult(Outcome.OK)

    async def charge(self, order: Order) -> StepResult:
        request = payments_api.ChargeRequest(
            order_id=order.order_id, amount_cents=order.total_cents, currency=order.currency
        )
        try:
            answer = await self.payments.call(
                payments_api.CHARGE,
                request,
                payments_api.ChargeResponse,
                timeout=self.charge_timeout,
                idempotency_key=(
                    charge_key(order.order_id) if self.consistency is Consistency.SAGA else None
                ),
            )
        except RpcError as e:
            return _from_error("charge", e)
        charge = answer.charge
        if charge.state is payments_api.ChargeState.SUCCEEDED:
            return StepResult(Outcome.OK)
        if charge.state is payments_api.ChargeState.PENDING:
            return StepResult(Outcome.UNCERTAIN, "charge: still pending at the provider")
        if charge.state is payments_api.ChargeState.DECLINED:
            return StepResult(Outcome.REFUSED, f"payment declined: {charge.decline_reason}")
        return StepResult(Outcome.REFUSED, f"charge: the charge is {charge.state.value}")

    async def commit(self, order: Order) -> StepResult:
        try:
            await self.inventory.call(
                inventory_api.COMMIT,
                inventory_api.CommitRequest(order_id=order.order_id),
                inventory_api.ReservationResponse,
                timeout=self.call_timeout,
                idempotency_key=self._key("commit", order.order_id),
            )
        except RpcError as e:
            return _from_error("commit", e)
        return StepResult(Outcome.OK)

    async def compensate(self, order: Order) -> StepResult:
        release, refund = await asyncio.gather(self._release(order), self._refund(order))
        problems = [r.reason for r in (release, refund) if r.outcome is not Outcome.OK]
        if problems:
            return StepResult(Outcome.UNCERTAIN, "; ".join(problems))
        return StepResult(Outcome.OK)

    async def _release(self, order: Order) -> StepResult:
        try:
            await self.inventory.call(
                inventory_api.RELEASE,
                inventory_api.ReleaseRequest(order_id=order.order_id, reason="order failed"),
                inventory_api.ReservationResponse,
                timeout=self.call_timeout,
                idempotency_key=self._key("release", order.order_id),
            )
        except RpcError as e:
            return StepResult(Outcome.UNCERTAIN, f"release: {e.message}")
        return StepResult(Outcome.OK)

    async def _refund(self, order: Order) -> StepResult:
        try:
            await self.payments.call(
                payments_api.REFUND,
                payments_api.RefundRequest(
                    order_id=order.order_id,
                    charge_key=charge_key(order.order_id),
                    reason="order failed",
                ),
                payments_api.RefundResponse,
                timeout=self.charge_timeout,
                idempotency_key=self._key("refund", order.order_id),
            )
        except RpcError as e:
            return StepResult(Outcome.UNCERTAIN, f"refund: {e.message}")
        return StepResult(Outcome.OK)


@dataclass
class CatalogPrices:
    """``PriceLookup`` over catalog's GetProduct (one call per distinct product, concurrently)."""

    catalog: RpcClient
    call_timeout: float

    async def _price(self, product_id: str) -> int:
        try:
            answer = await self.catalog.call(
                catalog_api.GET_PRODUCT,
                catalog_api.GetProductRequest(product_id=product_id),
                catalog_api.GetProductResponse,
                timeout=self.call_timeout,
                idempotent=True,
            )
        except RpcError as e:
            if e.code is Code.NOT_FOUND:
                raise InvalidArgument(
                    f"unknown product {product_id}; check the id against ListProducts"
                ) from None
            raise Unavailable(f"cannot price the order: catalog answered {e.code.value}") from None
        return answer.product.price_cents

    async def prices(self, product_ids: Sequence[str]) -> Mapping[str, int]:
        results = await asyncio.gather(
            *(self._price(p) for p in product_ids), return_exceptions=True
        )
        unknown = [
            p for p, r in zip(product_ids, results, strict=True) if isinstance(r, InvalidArgument)
        ]
        if unknown:
            raise UnknownProduct(
                f"unknown product(s): {', '.join(unknown)}; check the ids against ListProducts"
            )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return {p: r for p, r in zip(product_ids, results, strict=True) if isinstance(r, int)}
