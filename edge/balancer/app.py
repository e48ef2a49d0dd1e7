"""Build the load balancer's app: the process kit plus one catch-all proxy route.

``create_app(config)`` hangs everything off the app (no module-level state): the upstream
pool, the keep-alive ``ClientSession`` (opened and closed in a ``cleanup_ctx``), the health
checker task and the metrics. ``/healthz``, ``/readyz`` and ``/metrics`` are the balancer's own;
every other path is proxied.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from edge.balancer.config import BalancerConfig
from edge.balancer.metrics import BalancerMetrics
from edge.balancer.pool import UpstreamPool
from edge.balancer.proxy import Proxy
from mesh.discovery import Discovery, StaticDiscovery
from observability.app import REGISTRY_KEY, create_base_app

POOL_KEY = web.AppKey("balancer_pool", UpstreamPool)
PROXY_KEY = web.AppKey("balancer_proxy", Proxy)
SESSION_KEY = web.AppKey("balancer_session", aiohttp.ClientSession)
HEALTH_SESSION_LIMIT = 32


def client_session(config: BalancerConfig) -> aiohttp.ClientSession:
    """The keep-alive pool towards the instances: one per app, bounded, with deadlines."""
    connector = aiohttp.TCPConnector(
        limit=config.pool_size,
        limit_per_host=config.pool_per_host,
        keepalive_timeout=30.0,
        ttl_dns_cache=None,
    )
    timeout = aiohttp.ClientTimeout(
        total=config.total_timeout,
        sock_connect=config.connect_timeout,
        sock_read=config.read_timeout,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


def create_app(
    config: BalancerConfig,
    *,
    discovery: Discovery | None = None,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> web.Application:
    """The balancer app; ``discovery`` defaults to ``StaticDiscovery`` from TESTBED_UPSTREAMS."""
    app = create_base_app(config.process, registry=registry, tracer_provider=tracer_provider)
    disc = discovery if discovery is not None else StaticDiscovery.from_process(config.process)
    metrics = BalancerMetrics(app[REGISTRY_KEY])
    pool = UpstreamPool(config, disc, metrics)
    app[POOL_KEY] = pool

    async def resources(app: web.Application) -> AsyncIterator[None]:
        await disc.start()
        session = client_session(config)
        health_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=HEALTH_SESSION_LIMIT),
            timeout=aiohttp.ClientTimeout(total=config.health_timeout),
            trust_env=False,
        )
        app[SESSION_KEY] = session
        proxy = Proxy(config, pool, session, metrics)
        app[PROXY_KEY] = proxy
        checker = asyncio.create_task(pool.run_health_checks(health_session))
        try:
            yield
        finally:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker
            await session.close()
            await health_session.close()
            await disc.close()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await request.app[PROXY_KEY].handle(request)

    app.cleanup_ctx.append(resources)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
