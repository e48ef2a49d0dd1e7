"""Builds payments' aiohttp application: base app, RPC routes, database, recovery loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from observability.app import READINESS_KEY, create_base_app
from services.common.consistency import Consistency
from services.common.crash import CrashSwitch
from services.common.runtime import (
    CRASH_KEY,
    create_service_admin_app,
    database_path,
    periodic_ctx,
)
from services.common.write_watch import open_database
from services.payments.charging import Payments
from services.payments.config import Config
from services.payments.handlers import PAYMENTS_KEY, provider_settings, service
from services.payments.provider import PaymentProvider
from services.payments.store import MIGRATIONS, PaymentsStore


def create_app(
    config: Config,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> web.Application:
    app = create_base_app(config.process, registry=registry, tracer_provider=tracer_provider)
    app[READINESS_KEY].ready = False
    app[CRASH_KEY] = CrashSwitch(config.crash_after)

    async def database(app: web.Application) -> AsyncIterator[None]:
        db = await open_database(app, database_path(config.process), MIGRATIONS, config.db)
        try:
            app[PAYMENTS_KEY] = Payments(
                PaymentsStore(db),
                PaymentProvider(config.provider),
                consistency=config.consistency,
                crash=app[CRASH_KEY],
            )
            app[READINESS_KEY].ready = True
            yield
        finally:
            app[READINESS_KEY].ready = False
            await db.close()

    async def recover(app: web.Application) -> None:
        await app[PAYMENTS_KEY].resolve_pending(older_than_seconds=config.pending_grace)

    app.cleanup_ctx.append(database)
    if config.consistency is Consistency.SAGA:
        app.cleanup_ctx.append(periodic_ctx("payments-recovery", config.recovery_interval, recover))
    service.add_routes(app)
    return app


def create_admin(app: web.Application) -> web.Application:
    admin = create_service_admin_app(app)
    admin.router.add_get("/provider", provider_settings)
    admin.router.add_patch("/provider", provider_settings)
    return admin
