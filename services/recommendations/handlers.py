"""Recommendations' RPC method: thin — the cached catalog and the affinity model do the work."""

from __future__ import annotations

from aiohttp import web

from mesh.rpc import CallContext, Code, RpcError, RpcService
from services.recommendations.api import SERVICE, RecommendRequest, RecommendResponse
from services.recommendations.model import CatalogCache, recommend

CACHE_KEY = web.AppKey("recommendations_catalog_cache", CatalogCache)

service = RpcService(SERVICE)


@service.method("Recommend", idempotent=True)
async def recommend_handler(req: RecommendRequest, ctx: CallContext) -> RecommendResponse:
    try:
        products, by_id = await ctx.app[CACHE_KEY].products()
    except RpcError as e:
        raise RpcError(
            Code.UNAVAILABLE, f"recommendations cannot reach the catalog: {e.message}"
        ) from None
    base = by_id.get(req.product_id)
    if base is None:
        raise RpcError(Code.NOT_FOUND, f"product {req.product_id} is not in the catalog")
    return RecommendResponse(product_id=base.product_id, items=recommend(base, products, req.limit))
