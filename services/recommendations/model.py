""" "People also bought", computed from the catalog: a content-based affinity score.

There is no purchase history in the testbed, so affinity stands in for it: products of the same
category, of categories bought together (coffee with brewing gear, tea with cups, ...), sharing
tags and close in price score higher. Deterministic: the same catalog gives the same answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from services.catalog.api import Product
from services.recommendations.api import Recommendation

COMPLEMENTS: dict[str, frozenset[str]] = {
    "coffee": frozenset({"brewing", "cups", "snacks"}),
    "brewing": frozenset({"coffee"}),
    "tea": frozenset({"cups", "snacks"}),
    "cups": frozenset({"coffee", "tea"}),
    "snacks": frozenset({"coffee", "tea"}),
}


def affinity(base: Product, other: Product) -> float:
    score = 0.0
    if other.category == base.category:
        score += 0.5
    elif other.category in COMPLEMENTS.get(base.category, frozenset()):
        score += 0.4
    tags_a, tags_b = set(base.tags), set(other.tags)
    if tags_a or tags_b:
        score += 0.3 * len(tags_a & tags_b) / len(tags_a | tags_b)
    top = max(base.price_cents, other.price_cents, 1)
    score += 0.2 * (1 - abs(base.price_cents - other.price_cents) / top)
    return round(score, 4)


def recommend(base: Product, catalog: Sequence[Product], limit: int) -> list[Recommendation]:
    scored = sorted(
        ((affinity(base, p), p) for p in catalog if p.product_id != base.product_id),
        key=lambda sp: (-sp[0], sp[1].product_id),
    )
    return [
        Recommendation(product_id=p.product_id, name=p.name, price_cents=p.price_cents, score=s)
        for s, p in scored[:limit]
    ]


class CatalogCache:
    """The whole catalog, fetched by RPC and reused for ``ttl`` seconds (one entry: bounded).

    Concurrent misses share one fetch. If a refresh fails, the previous copy keeps serving.
    """

    def __init__(self, fetch: Callable[[], Awaitable[list[Product]]], ttl: float) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._products: list[Product] = []
        self._by_id: dict[str, Product] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def products(self) -> tuple[list[Product], dict[str, Product]]:
        if time.monotonic() - self._fetched_at > self._ttl:
            async with self._lock:
                if time.monotonic() - self._fetched_at > self._ttl:
                    try:
                        products = await self._fetch()
                    except Exception:
                        if not self._products:
                            raise
                    else:
                        self._products = products
                        self._by_id = {p.product_id: p for p in products}
                        self._fetched_at = time.monotonic()
        return self._products, self._by_id
