"""Builds recommendations' aiohttp application: base app, RPC route, catalog client and cache."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from mesh.discovery import Discovery
from mesh.registry_discovery import discovery_for
from observability.app import create_base_app
from services.catalog import api as catalog_api
from services.catalog.api import Product
from services.common.runtime import DISCOVERY_KEY, http_session_ctx, rpc_client
from services.recommendations.config import Config
from services.recommendations.handlers import CACHE_KEY, service
from services.recommendations.model import CatalogCache

MAX_PAGES = 50


def create_app(
    config: Config,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    discovery: Discovery | None = None,
) -> web.Application:
    app = create_base_app(config.process, registry=registry, tracer_provider=tracer_provider)
    app[DISCOVERY_KEY] = discovery or discovery_for(config.process, services=("catalog",))

    async def catalog_cache(app: web.Application) -> AsyncIterator[None]:
        client = rpc_client(app, "catalog", config.process)

        async def fetch() -> list[Product]:
            products: list[Product] = []
            token = ""
            for _ in range(MAX_PAGES):
                page = await client.call(
                    catalog_api.LIST_PRODUCTS,
                    catalog_api.ListProductsRequest(page_size=200, page_token=token),
                    catalog_api.ListProductsResponse,
                    timeout=config.catalog_timeout,
                    idempotent=True,
                )
                products.extend(page.products)
                token = page.next_page_token
                if not token:
                    break
            return products

        app[CACHE_KEY] = CatalogCache(fetch, config.catalog_ttl)
        yield

    app.cleanup_ctx.append(http_session_ctx())
    app.cleanup_ctx.append(catalog_cache)
    service.add_routes(app)
    return app
