"""Orders' RPC surface: service name, method paths and request/response models."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field, field_validator

from services.common.types import MAX_LINES, OrderId, ProductId, Quantity

SERVICE = "testbed.orders.v1.OrderService"
PLACE_ORDER = f"{SERVICE}/PlaceOrder"
GET_ORDER = f"{SERVICE}/GetOrder"
AUDIT = f"{SERVICE}/Audit"


class OrderStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    FAILED = "failed"


class OrderLine(BaseModel):
    product_id: ProductId
    quantity: Quantity


class PlaceOrderRequest(BaseModel):
    customer_id: str = Field(default="anonymous", min_length=1, max_length=64)
    items: list[OrderLine] = Field(max_length=MAX_LINES)

    @field_validator("items")
    @classmethod
    def _not_empty_and_distinct(cls, items: list[OrderLine]) -> list[OrderLine]:
        if not items:
            raise ValueError("an order needs at least one item")
        seen: set[str] = set()
        for line in items:
            if line.product_id in seen:
                raise ValueError(
                    f"product {line.product_id} appears twice; put its total quantity on one line"
                )
            seen.add(line.product_id)
        return items


class OrderItem(BaseModel):
    product_id: str
    quantity: int
    unit_price_cents: int


class Order(BaseModel):
    order_id: str
    customer_id: str
    status: OrderStatus
    step: str
    items: list[OrderItem]
    total_cents: int
    currency: str = "USD"
    failure_reason: str = ""
    created_at: float
    updated_at: float


class PlaceOrderResponse(BaseModel):
    order: Order


class GetOrderRequest(BaseModel):
    order_id: OrderId


class GetOrderResponse(BaseModel):
    order: Order


class AuditRequest(BaseModel):
    pass


class OrdersAudit(BaseModel):
    """A consistent snapshot of orders, with the saga timeout the audit holds them to."""

    service: str = "orders"
    taken_at: float
    consistency: str
    saga_timeout_seconds: float
    orders: list[Order]
