"""Builds the registry's aiohttp application on the shared process kit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, Gauge

from management.registry import routes
from management.registry.config import RegistryConfig
from management.registry.handlers import CONFIG, STORE
from management.registry.store import RegistryStore
from observability.app import DRAIN_HOOKS_KEY, REGISTRY_KEY, create_base_app
from observability.logs import get_logger

log = get_logger(__name__)


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    """Removes registrations whose TTL ran out, every ``sweep_seconds``."""
    store, config = app[STORE], app[CONFIG]
    gauge = Gauge(
        "registry_instances",
        "Live registrations",
        registry=app[REGISTRY_KEY],
    )
    gauge.set_function(lambda: sum(len(v) for v in store.services().values()))

    async def sweep() -> None:
        while True:
            await asyncio.sleep(config.sweep_seconds)
            for record in store.expire():
                log.info(
                    "registration_expired",
                    service=record.service,
                    instance=record.instance_id,
                    address=record.address,
                )

    task = asyncio.create_task(sweep(), name="registry-sweeper")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(
    config: RegistryConfig,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> web.Application:
    app = create_base_app(config.process, registry=registry, tracer_provider=tracer_provider)
    app[CONFIG] = config
    app[STORE] = RegistryStore(max_instances=config.max_instances)
    routes.add_routes(app)
    app.cleanup_ctx.append(_sweeper)

    async def release_watchers(app: web.Application) -> None:
        # Long polls would hold the drain open for up to max_wait: answer them now.
        app[STORE].release_watchers()

    app[DRAIN_HOOKS_KEY].append(release_watchers)
    return app
