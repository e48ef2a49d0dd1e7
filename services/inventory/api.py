"""Inventory's RPC surface: service name, method paths and request/response models.

Every mutation names the order it is for; in ``saga`` mode the order id is the idempotency key
(the same Reserve twice holds stock once; a Release before any Reserve leaves a tombstone so a
late Reserve is refused instead of holding stock nobody will release).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field, field_validator

from services.common.types import MAX_LINES, OrderId, ProductId, Quantity

SERVICE = "testbed.inventory.v1.InventoryService"
GET_AVAILABILITY = f"{SERVICE}/GetAvailability"
RESERVE = f"{SERVICE}/Reserve"
RELEASE = f"{SERVICE}/Release"
COMMIT = f"{SERVICE}/Commit"
AUDIT = f"{SERVICE}/Audit"


class ReservationState(StrEnum):
    HELD = "held"
    RELEASED = "released"
    EXPIRED = "expired"
    COMMITTED = "committed"


class Item(BaseModel):
    product_id: ProductId
    quantity: Quantity


class GetAvailabilityRequest(BaseModel):
    product_ids: list[ProductId] = Field(min_length=1, max_length=200)


class Availability(BaseModel):
    product_id: str
    available: int


class GetAvailabilityResponse(BaseModel):
    items: list[Availability]


class ReserveRequest(BaseModel):
    order_id: OrderId
    items: list[Item] = Field(min_length=1, max_length=MAX_LINES)
    ttl_seconds: float = Field(default=120.0, gt=0, le=86_400)

    @field_validator("items")
    @classmethod
    def _distinct(cls, items: list[Item]) -> list[Item]:
        seen: set[str] = set()
        for item in items:
            if item.product_id in seen:
                raise ValueError(
                    f"product {item.product_id} appears twice; put its total quantity on one line"
                )
            seen.add(item.product_id)
        return items


class ReleaseRequest(BaseModel):
    order_id: OrderId
    reason: str = Field(default="", max_length=200)


class CommitRequest(BaseModel):
    order_id: OrderId


class Reservation(BaseModel):
    reservation_id: int
    order_id: str
    state: ReservationState
    items: list[Item]
    expires_at: float
    created_at: float
    updated_at: float
    reason: str = ""


class ReservationResponse(BaseModel):
    reservation: Reservation


class AuditRequest(BaseModel):
    pass


class StockRow(BaseModel):
    product_id: str
    initial: int
    available: int
    reserved: int
    committed: int


class InventoryAudit(BaseModel):
    """A consistent snapshot of inventory: stock counters and every reservation."""

    service: str = "inventory"
    taken_at: float
    stock: list[StockRow]
    reservations: list[Reservation]
