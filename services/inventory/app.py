"""Builds inventory's aiohttp application: base app, RPC routes, database, expiry sweeper."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from observability.app import READINESS_KEY, create_base_app
from services.common.runtime import database_path, periodic_ctx
from services.common.write_watch import open_database
from services.inventory.config import Config
from services.inventory.handlers import STORE_KEY, service
from services.inventory.store import MIGRATIONS, InventoryStore


async def _expire(app: web.Application) -> None:
    await app[STORE_KEY].expire_due()


def create_app(
    config: Config,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> web.Application:
    app = create_base_app(config.process, registry=registry, tracer_provider=tracer_provider)
    app[READINESS_KEY].ready = False

    async def database(app: web.Application) -> AsyncIterator[None]:
        db = await open_database(app, database_path(config.process), MIGRATIONS, config.db)
        try:
            app[STORE_KEY] = await InventoryStore.open(
                db, consistency=config.consistency, seed_count=config.seed_products
            )
            app[READINESS_KEY].ready = True
            yield
        finally:
            app[READINESS_KEY].ready = False
            await db.close()

    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(periodic_ctx("inventory-expiry", config.expiry_interval, _expire))
    service.add_routes(app)
    return app
