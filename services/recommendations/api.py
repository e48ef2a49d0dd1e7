"""Recommendations' RPC surface: service name, method path and request/response models."""

from __future__ import annotations

from pydantic import BaseModel, Field

from services.common.types import ProductId

SERVICE = "testbed.recommendations.v1.RecommendationService"
RECOMMEND = f"{SERVICE}/Recommend"


class RecommendRequest(BaseModel):
    product_id: ProductId
    limit: int = Field(default=5, ge=1, le=20)


class Recommendation(BaseModel):
    product_id: str
    name: str
    price_cents: int
    score: float


class RecommendResponse(BaseModel):
    product_id: str
    items: list[Recommendation]
    degraded: bool = False
    """True when the answer is a fallback (recommendations unreachable): the page still renders."""
