"""Catalog's RPC surface: service name, method paths and request/response models."""

from __future__ import annotations

from pydantic import BaseModel, Field

from services.common.types import ProductId

SERVICE = "testbed.catalog.v1.CatalogService"
LIST_PRODUCTS = f"{SERVICE}/ListProducts"
GET_PRODUCT = f"{SERVICE}/GetProduct"
AUDIT = f"{SERVICE}/Audit"


class Product(BaseModel):
    product_id: str
    name: str
    description: str
    category: str
    tags: list[str]
    price_cents: int
    currency: str = "USD"
    version: int = 1


class ListProductsRequest(BaseModel):
    page_size: int = Field(default=50, ge=1, le=200)
    page_token: str = Field(
        default="", max_length=64, description="next_page_token of the last page"
    )
    category: str | None = Field(default=None, max_length=64)


class ListProductsResponse(BaseModel):
    products: list[Product]
    next_page_token: str = ""


class GetProductRequest(BaseModel):
    product_id: ProductId


class GetProductResponse(BaseModel):
    product: Product


class AuditRequest(BaseModel):
    pass


class CatalogAudit(BaseModel):
    """A consistent snapshot of the catalog: every product id and its current price."""

    service: str = "catalog"
    taken_at: float
    products: list[Product]
