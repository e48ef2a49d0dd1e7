"""The public API's handlers: parse, call the services, answer with the public models.

Thin by design: input checks live in :mod:`edge.gateway.inputs`, RPC plumbing and error
mapping in :mod:`edge.gateway.upstreams`; each handler maps the services' models onto the
public ones (:mod:`edge.gateway.models`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from edge.gateway import models
from edge.gateway.auth import API_KEY_HEADER
from edge.gateway.images import image_path
from edge.gateway.inputs import idempotency_key, path_id, read_json
from edge.gateway.problems import ProblemError, validation_problem
from edge.gateway.upstreams import (
    CATALOG,
    GATEWAY_CONFIG_KEY,
    GATEWAY_METRICS_KEY,
    INVENTORY,
    ORDERS,
    RECOMMENDATIONS,
    UPSTREAMS_KEY,
    rpc_problem,
)
from mesh.resilience import NO_DEADLINE_CAP
from mesh.rpc import RpcError, deadline_after
from observability.logs import get_logger
from services.catalog import api as catalog
from services.inventory import api as inventory
from services.orders import api as orders
from services.recommendations import api as recommendations

T = TypeVar("T")

_log = get_logger("edge.gateway")

LIST_CACHE_DEFAULT = "public, max-age=10"
NO_STORE = "no-store"


def _json(model: BaseModel, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=model.model_dump_json().encode(),
        content_type="application/json",
        headers={"Cache-Control": NO_STORE, **(headers or {})},
    )


def customer_of(request: web.Request) -> str:
    """The customer an API key stands for: a digest, so the key itself is never stored."""
    digest = hashlib.sha256(request.headers[API_KEY_HEADER].encode()).hexdigest()
    return f"key-{digest[:16]}"


def _product(p: catalog.Product) -> models.Product:
    return models.Product(
        id=p.product_id,
        name=p.name,
        description=p.description,
        category=p.category,
        tags=p.tags,
        price_cents=p.price_cents,
        currency=p.currency,
        image_url=image_path(p.product_id),
    )


def _order(o: orders.Order) -> models.Order:
    return models.Order(
        id=o.order_id,
        status=o.status,
        items=[
            models.OrderItem(
                product_id=i.product_id, quantity=i.quantity, unit_price_cents=i.unit_price_cents
            )
            for i in o.items
        ],
        total_cents=o.total_cents,
        currency=o.currency,
        reason=o.failure_reason or None,
        created_at=o.created_at,
        updated_at=o.updated_at,
    )


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


async def list_products(request: web.Request) -> web.Response:
    """``GET /api/products``: one page of the catalogue, cacheable as the catalog says."""
    config = request.app[GATEWAY_CONFIG_KEY]
    fields = models.ProductListQuery.model_fields
    raw = {name: value for name, value in request.query.items() if name in fields}
    try:
        query = models.ProductListQuery.model_validate(raw)
    except ValidationError as exc:
        raise validation_problem(exc, where="query") from None
    try:
        answer, headers = await request.app[UPSTREAMS_KEY].catalog.call_with_headers(
            catalog.LIST_PRODUCTS,
            catalog.ListProductsRequest(
                page_size=query.page_size, page_token=query.page_token, category=query.category
            ),
            catalog.ListProductsResponse,
            timeout=config.upstream_timeout,
            idempotent=True,
        )
    except RpcError as exc:
        raise rpc_problem(exc, CATALOG, request.app[GATEWAY_METRICS_KEY]) from None
    body = models.ProductList(
        items=[_product(p) for p in answer.products],
        next_page_token=answer.next_page_token or None,
    )
    payload = body.model_dump_json().encode()
    etag = headers.get("ETag") or '"' + hashlib.sha256(payload).hexdigest()[:32] + '"'
    cache = {
        "Cache-Control": headers.get("Cache-Control") or LIST_CACHE_DEFAULT,
        "ETag": etag,
        "Vary": API_KEY_HEADER,
    }
    inm = request.headers.get("If-None-Match")
    if inm is not None and (inm.strip() == "*" or etag.removeprefix("W/") in _etags(inm)):
        return web.Response(status=304, headers=cache)
    return web.Response(body=payload, content_type="application/json", headers=cache)


async def _optional(
    request: web.Request, upstream: str, call: Awaitable[T], budget: float | None
) -> T | None:
    """``call``'s result, or ``None`` (counted and logged) if it fails or outlasts ``budget``."""
    try:
        async with asyncio.timeout(budget):
            return await call
    except (RpcError, TimeoutError) as exc:
        request.app[GATEWAY_METRICS_KEY].upstream_degraded.labels(upstream=upstream).inc()
        reason = exc.code.value if isinstance(exc, RpcError) else "budget_exceeded"
        _log.info("upstream_degraded", upstream=upstream, reason=reason)
        return None


async def get_product(request: web.Request) -> web.Response:
    """``GET /api/products/{id}``: catalog, availability and recommendations, in parallel.

    The catalog is required; availability and recommendations are optional, recommendations
    with a short budget. A missing optional part is ``null`` and named in ``degraded``.
    """
    product_id = path_id(request)
    config = request.app[GATEWAY_CONFIG_KEY]
    up = request.app[UPSTREAMS_KEY]
    budget = (
        config.recommendations_budget if up.recommendations.profile.deadlines else NO_DEADLINE_CAP
    )
    with deadline_after(config.upstream_timeout):
        try:
            async with asyncio.TaskGroup() as tasks:
                product_task = tasks.create_task(
                    up.catalog.call(
                        catalog.GET_PRODUCT,
                        catalog.GetProductRequest(product_id=product_id),
                        catalog.GetProductResponse,
                        timeout=config.upstream_timeout,
                        idempotent=True,
                    )
                )
                stock_task = tasks.create_task(
                    _optional(
                        request,
                        INVENTORY,
                        up.inventory.call(
                            inventory.GET_AVAILABILITY,
                            inventory.GetAvailabilityRequest(product_ids=[product_id]),
                            inventory.GetAvailabilityResponse,
                            timeout=config.upstream_timeout,
                            idempotent=True,
                        ),
                        None,
                    )
                )
                recs_task = tasks.create_task(
                    _optional(
                        request,
                        RECOMMENDATIONS,
                        up.recommendations.call(
                            recommendations.RECOMMEND,
                            recommendations.RecommendRequest(product_id=product_id),
                            recommendations.RecommendResponse,
                            timeout=budget,
                            idempotent=True,
                        ),
                        budget,
                    )
                )
        except* RpcError as group:
            error = group.exceptions[0]
            assert isinstance(error, RpcError)
            raise rpc_problem(error, CATALOG, request.app[GATEWAY_METRICS_KEY]) from None
    degraded: list[models.Degradable] = []
    stock = stock_task.result()
    availability = None
    if stock is not None:
        available = sum(i.available for i in stock.items if i.product_id == product_id)
        availability = models.Availability(available=available, in_stock=available > 0)
    else:
        degraded.append("availability")
    recs = recs_task.result()
    recommended = None
    if recs is not None:
        recommended = [
            models.Recommendation(
                product_id=r.product_id,
                name=r.name,
                price_cents=r.price_cents,
                score=r.score,
                image_url=image_path(r.product_id),
            )
            for r in recs.items
        ]
    if recs is None or recs.degraded:
        degraded.append("recommendations")
    detail = models.ProductDetail(
        product=_product(product_task.result().product),
        availability=availability,
        recommendations=recommended,
        degraded=degraded,
    )
    return _json(detail)


async def checkout(request: web.Request) -> web.Response:
    """``POST /api/checkout``: place an order, exactly once per ``Idempotency-Key``."""
    config = request.app[GATEWAY_CONFIG_KEY]
    metrics = request.app[GATEWAY_METRICS_KEY]
    key = idempotency_key(request)
    body = await read_json(request, models.CheckoutRequest, limit=config.max_body_bytes)
    repeated = body.repeated_product()
    if repeated is not None:
        raise ProblemError(
            422,
            "repeated-product",
            f"product {repeated} appears on two lines; put its whole quantity on one line",
        )
    customer = customer_of(request)
    try:
        answer = await request.app[UPSTREAMS_KEY].orders.call(
            orders.PLACE_ORDER,
            orders.PlaceOrderRequest(
                customer_id=customer,
                items=[
                    orders.OrderLine(product_id=i.product_id, quantity=i.quantity)
                    for i in body.items
                ],
            ),
            orders.PlaceOrderResponse,
            timeout=config.checkout_timeout,
            # Scoped to the customer: two API keys choosing the same key get two orders.
            idempotency_key=f"{customer}:{key}",
        )
    except RpcError as exc:
        metrics.checkouts.labels(status="error").inc()
        raise rpc_problem(exc, ORDERS, metrics) from None
    metrics.checkouts.labels(status=answer.order.status.value).inc()
    return _json(_order(answer.order))


async def get_order(request: web.Request) -> web.Response:
    """``GET /api/orders/{id}``: an order of the caller's, with its status."""
    order_id = path_id(request)
    config = request.app[GATEWAY_CONFIG_KEY]
    try:
        answer = await request.app[UPSTREAMS_KEY].orders.call(
            orders.GET_ORDER,
            orders.GetOrderRequest(order_id=order_id),
            orders.GetOrderResponse,
            timeout=config.upstream_timeout,
            idempotent=True,
        )
    except RpcError as exc:
        raise rpc_problem(exc, ORDERS, request.app[GATEWAY_METRICS_KEY]) from None
    if answer.order.customer_id != customer_of(request):
        # Another key's order: as far as this caller knows, it does not exist.
        raise ProblemError(404, "not-found", f"order {order_id} not found")
    return _json(_order(answer.order))
