"""Builds catalog's aiohttp application: the base app, its RPC routes and its database."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from observability.app import READINESS_KEY, create_base_app
from services.catalog.config import Config
from services.catalog.handlers import CONFIG_KEY, STORE_KEY, service
from services.catalog.store import MIGRATIONS, CatalogStore
from services.common.runtime import database_path
from services.common.write_watch import open_database


def create_app(
    config: Config,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> web.Application:
    app = create_base_app(config.process, registry=registry, tracer_provider=tracer_provider)
    app[CONFIG_KEY] = config
    app[READINESS_KEY].ready = False

    async def database(app: web.Application) -> AsyncIterator[None]:
        db = await open_database(app, database_path(config.process), MIGRATIONS, config.db)
        try:
            app[STORE_KEY] = await CatalogStore.open(db, seed_count=config.seed_products)
            app[READINESS_KEY].ready = True
            yield
        finally:
            app[READINESS_KEY].ready = False
            await db.close()

    app.cleanup_ctx.append(database)
    service.add_routes(app)
    return app
