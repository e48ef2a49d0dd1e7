"""For callers (the gateway, tests): recommendations with a fallback, and a product page.

Recommendations are deliberately non-critical: ``recommend_or_fallback`` gives them a short
deadline and answers an empty, ``degraded`` list on any failure, so a page that shows them
renders whether or not the service is up.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from mesh.rpc import RpcClient, RpcError
from observability.logs import get_logger
from services.catalog import api as catalog_api
from services.recommendations import api

_log = get_logger("services.recommendations.client")


async def recommend_or_fallback(
    client: RpcClient, product_id: str, *, limit: int = 5, deadline_seconds: float = 0.5
) -> api.RecommendResponse:
    """Recommendations for ``product_id``, or an empty degraded answer if they fail."""
    try:
        return await client.call(
            api.RECOMMEND,
            api.RecommendRequest(product_id=product_id, limit=limit),
            api.RecommendResponse,
            timeout=deadline_seconds,
            idempotent=True,
        )
    except RpcError as e:
        _log.warning("recommendations_fallback", product_id=product_id, code=e.code.value)
        return api.RecommendResponse(product_id=product_id, items=[], degraded=True)


class ProductPage(BaseModel):
    product: catalog_api.Product
    recommendations: api.RecommendResponse


async def product_page(
    catalog: RpcClient,
    recommendations: RpcClient,
    product_id: str,
    *,
    deadline_seconds: float = 2.0,
    recommendations_deadline: float = 0.5,
) -> ProductPage:
    """The product (required: its errors propagate) and its recommendations (optional)."""
    product, recs = await asyncio.gather(
        catalog.call(
            catalog_api.GET_PRODUCT,
            catalog_api.GetProductRequest(product_id=product_id),
            catalog_api.GetProductResponse,
            timeout=deadline_seconds,
            idempotent=True,
        ),
        recommend_or_fallback(
            recommendations, product_id, deadline_seconds=recommendations_deadline
        ),
    )
    return ProductPage(product=product.product, recommendations=recs)
