"""Builds orders' aiohttp application: base app, RPC routes, database, upstream clients and
the saga recovery loop (``saga`` mode only)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from mesh.discovery import Discovery
from mesh.registry_discovery import discovery_for
from observability.app import READINESS_KEY, REGISTRY_KEY, create_base_app
from services.common.consistency import Consistency
from services.common.crash import CrashSwitch
from services.common.runtime import (
    CRASH_KEY,
    DISCOVERY_KEY,
    database_path,
    drain_tasks_ctx,
    http_session_ctx,
    periodic_ctx,
    rpc_client,
)
from services.common.write_watch import open_database
from services.orders.checkout import Checkout, SagaMetrics
from services.orders.config import Config
from services.orders.handlers import CHECKOUT_KEY, SAGA_TASKS_KEY, service
from services.orders.store import MIGRATIONS, OrdersStore
from services.orders.upstreams import CatalogPrices, RpcSagaUpstreams


async def _recover(app: web.Application) -> None:
    await app[CHECKOUT_KEY].recover_once()


def create_app(
    config: Config,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    discovery: Discovery | None = None,
) -> web.Application:
    process = config.process
    app = create_base_app(process, registry=registry, tracer_provider=tracer_provider)
    app[READINESS_KEY].ready = False
    app[CRASH_KEY] = CrashSwitch(config.crash_after)
    app[DISCOVERY_KEY] = discovery or discovery_for(process, services=("inventory", "payments"))
    metrics = SagaMetrics(app[REGISTRY_KEY])

    async def database(app: web.Application) -> AsyncIterator[None]:
        db = await open_database(app, database_path(process), MIGRATIONS, config.db)
        try:
            app[CHECKOUT_KEY] = Checkout(
                OrdersStore(db),
                RpcSagaUpstreams(
                    inventory=rpc_client(app, "inventory", process),
                    payments=rpc_client(app, "payments", process),
                    consistency=config.consistency,
                    reservation_ttl=config.saga.reservation_ttl,
                    call_timeout=config.call_timeout,
                    charge_timeout=config.charge_timeout,
                ),
                CatalogPrices(rpc_client(app, "catalog", process), config.call_timeout),
                settings=config.saga,
                consistency=config.consistency,
                crash=app[CRASH_KEY],
                # a new owner per process start: a restarted instance does not inherit leases
                owner=f"{process.instance_id}/{uuid.uuid4().hex[:8]}",
                metrics=metrics,
            )
            app[READINESS_KEY].ready = True
            yield
        finally:
            app[READINESS_KEY].ready = False
            await db.close()

    app.cleanup_ctx.append(http_session_ctx())
    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(drain_tasks_ctx(SAGA_TASKS_KEY, process.drain_seconds))
    if config.consistency is Consistency.SAGA:
        app.cleanup_ctx.append(periodic_ctx("orders-recovery", config.recovery_interval, _recover))
    service.add_routes(app)
    return app
