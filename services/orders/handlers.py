"""Orders' RPC methods: thin — ``Checkout`` does the work.

PlaceOrder records the order, then runs its saga in a task of its own (so a caller that gives
up does not cut the saga short) and waits for it while the caller's deadline allows; an order
whose saga is still running is answered as ``pending`` and GetOrder tells how it ended.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from mesh.rpc import CallContext, RpcService
from services.common.errors import NotFound
from services.common.runtime import detached, rpc_errors
from services.orders.api import (
    SERVICE,
    AuditRequest,
    GetOrderRequest,
    GetOrderResponse,
    OrdersAudit,
    PlaceOrderRequest,
    PlaceOrderResponse,
)
from services.orders.checkout import Checkout
from services.orders.saga import TERMINAL, Step

CHECKOUT_KEY = web.AppKey("orders_checkout", Checkout)
SAGA_TASKS_KEY: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("orders_saga_tasks")
ANSWER_MARGIN = 0.05  # seconds kept to answer before the caller's deadline

service = RpcService(SERVICE)


@service.method("PlaceOrder")
async def place_order(req: PlaceOrderRequest, ctx: CallContext) -> PlaceOrderResponse:
    checkout = ctx.app[CHECKOUT_KEY]
    with rpc_errors():
        order = await checkout.place(req, idempotency_key=ctx.idempotency_key)
    if Step(order.step) in TERMINAL or order.order_id in checkout.driving:
        return PlaceOrderResponse(order=order)
    task = detached(checkout.drive(order), ctx.app[SAGA_TASKS_KEY])
    left = ctx.remaining()
    wait = None if left is None else max(left - ANSWER_MARGIN, 0.0)
    done, _ = await asyncio.wait({task}, timeout=wait)
    if task in done and not task.cancelled() and task.exception() is None:
        return PlaceOrderResponse(order=task.result())
    latest = await checkout.store.get(order.order_id)
    return PlaceOrderResponse(order=latest or order)


@service.method("GetOrder", idempotent=True)
async def get_order(req: GetOrderRequest, ctx: CallContext) -> GetOrderResponse:
    order = await ctx.app[CHECKOUT_KEY].store.get(req.order_id)
    if order is None:
        with rpc_errors():
            raise NotFound(f"order {req.order_id} does not exist")
    return GetOrderResponse(order=order)


@service.method("Audit", idempotent=True)
async def audit(req: AuditRequest, ctx: CallContext) -> OrdersAudit:
    checkout = ctx.app[CHECKOUT_KEY]
    orders = await checkout.store.all_orders()
    return OrdersAudit(
        taken_at=time.time(),
        consistency=checkout.consistency.value,
        saga_timeout_seconds=checkout.settings.saga_timeout,
        orders=orders,
    )
