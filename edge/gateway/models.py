"""The public API's data shapes: what clients send and receive, as pydantic models.

These models are the single source of both request validation and the OpenAPI document
(:mod:`edge.gateway.openapi` builds the schemas from them), so the two cannot drift. They are
the gateway's own contract, deliberately separate from the services' RPC models in
``services/*/api.py``: a service may change its internal shape without changing the public API
(the handlers map one onto the other).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from services.common.types import ID_PATTERN, MAX_LINES, MAX_QUANTITY
from services.orders.api import OrderStatus

IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{8,128}$"
"""An ``Idempotency-Key``: 8-128 URL-safe characters (a UUID fits)."""


def _whole(value: object) -> object:
    """``2.0`` as ``2``: JSON Schema's ``integer`` is any number without a fraction, so a
    client may send it that way; anything else goes to the strict check unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole)]
"""An integer as JSON Schema means it (``2`` or ``2.0``, never ``true`` or ``"2"``)."""

ProductId = Annotated[str, Field(pattern=ID_PATTERN, examples=["p-001"])]
"""Ids follow the services' own rule, so the gateway refuses exactly what they would."""

Degradable = Literal["recommendations", "availability"]


class _Public(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Product(_Public):
    """A product as the storefront shows it."""

    id: ProductId
    name: str
    description: str
    category: str
    tags: list[str]
    price_cents: int = Field(description="Price in the currency's minor unit.")
    currency: str = Field(examples=["USD"])
    image_url: str = Field(description="Generated image of the product (SVG), cacheable forever.")


class ProductList(_Public):
    """One page of the product catalogue."""

    items: list[Product]
    next_page_token: str | None = Field(
        description="Pass as page_token to get the next page; null on the last page."
    )


class ProductListQuery(_Public):
    """Query parameters of the product list."""

    page_size: int = Field(default=50, ge=1, le=200)
    page_token: str = Field(
        default="",
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="next_page_token of the previous page, unchanged.",
    )
    category: str | None = Field(default=None, min_length=1, max_length=64)


class Availability(_Public):
    """How many units of a product can be ordered now."""

    available: int = Field(ge=0)
    in_stock: bool


class Recommendation(_Public):
    """A product recommended alongside another."""

    product_id: str
    name: str
    price_cents: int
    score: float
    image_url: str


class ProductDetail(_Public):
    """One product with its availability and recommendations, gathered in one answer.

    Optional parts that could not be had in time are ``null`` and named in ``degraded``.
    """

    product: Product
    availability: Availability | None
    recommendations: list[Recommendation] | None
    degraded: list[Degradable] = Field(
        description="Parts left out because their service failed or was too slow."
    )


class CheckoutItem(_Public):
    """One line of an order."""

    product_id: ProductId
    quantity: WholeNumber = Field(strict=True, ge=1, le=MAX_QUANTITY)


class CheckoutRequest(_Public):
    """What to order, one line per product; the ``Idempotency-Key`` header makes retries safe."""

    items: list[CheckoutItem] = Field(
        min_length=1,
        max_length=MAX_LINES,
        description=(
            "Distinct products: put a product's whole quantity on one line (a product on two "
            "lines is refused with 422, a rule JSON Schema cannot state)."
        ),
    )

    def repeated_product(self) -> str | None:
        """The first product that appears on two lines, if any (the gateway answers 422:
        the request is well-formed, its content cannot be processed)."""
        seen: set[str] = set()
        for item in self.items:
            if item.product_id in seen:
                return item.product_id
            seen.add(item.product_id)
        return None


class OrderItem(_Public):
    """One line of a placed order, priced."""

    product_id: str
    quantity: int
    unit_price_cents: int


class Order(_Public):
    """An order and where it stands: ``pending`` while the checkout runs, then final."""

    id: str
    status: OrderStatus
    items: list[OrderItem]
    total_cents: int
    currency: str
    reason: str | None = Field(description="Why the order failed, if it did.")
    created_at: float = Field(description="Unix time the order was placed.")
    updated_at: float = Field(description="Unix time of its last change.")


class FieldError(_Public):
    """One invalid input: where it is and what is wrong with it."""

    field: str
    message: str


class Problem(_Public):
    """An error, as RFC 9457 ``application/problem+json``."""

    type: str
    title: str
    status: int
    detail: str
    trace_id: str | None = Field(description="Trace of the failed request, to look it up.")
    errors: list[FieldError] | None = None
