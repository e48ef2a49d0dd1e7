"""Build the load balancer's app: the process kit plus one catch-all proxy route.

``create_app(config)`` hangs everything off the app (no module-level state): the upstream
pool, the keep-alive ``UpstreamClient`` (the balancer's own HTTP/1.1 client, opened and closed
in a ``cleanup_ctx``), the health checker task (on an aiohttp ``ClientSession``: a few requests
a second need no special client) and the metrics. ``/healthz``, ``/readyz`` and ``/metrics``
are the balancer's own; every other path is proxied, on the wire lane (``edge.front.wire``)
for connections that start there, else through aiohttp. ``create_balancer_admin_app`` adds
``GET /ejections`` to the admin API: which instances are in rotation, and the recent
ejections and readmissions with their times and reasons (``edge.balancer.pool``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from edge.balancer.config import BalancerConfig
from edge.balancer.metrics import BalancerMetrics
from edge.balancer.pool import UpstreamPool
from edge.balancer.proxy import Proxy
from edge.balancer.upstream import UpstreamClient
from edge.front.fastlane import FAST_LANE_KEY, FastLane
from edge.front.wire import WIRE_LANE_KEY, Reply, WireLane, WireRequest
from mesh.discovery import Discovery, StaticDiscovery
from observability.app import REGISTRY_KEY, create_admin_app, create_base_app
from observability.errors import PROBLEM_ERRORS

POOL_KEY = web.AppKey("balancer_pool", UpstreamPool)
PROXY_KEY = web.AppKey("balancer_proxy", Proxy)
CLIENT_KEY = web.AppKey("balancer_client", UpstreamClient)
HEALTH_SESSION_LIMIT = 32


def upstream_client(config: BalancerConfig) -> UpstreamClient:
    """The keep-alive pools towards the instances: one per app, bounded, with deadlines.
    Call it inside the running event loop."""
    return UpstreamClient(
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        total_timeout=config.total_timeout,
        first_byte_timeout=config.first_byte_timeout,
        idle_timeout=config.idle_timeout,
        per_host=config.pool_per_host,
        total=config.pool_size,
        buffer_bytes=config.buffer_bytes,
    )


def create_app(
    config: BalancerConfig,
    *,
    discovery: Discovery | None = None,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> web.Application:
    """The balancer app; ``discovery`` defaults to ``StaticDiscovery`` from TESTBED_UPSTREAMS."""
    app = create_base_app(
        config.process,
        registry=registry,
        tracer_provider=tracer_provider,
        error_shape=PROBLEM_ERRORS,  # a client's answer: the edge's one error shape
    )
    disc = discovery if discovery is not None else StaticDiscovery.from_process(config.process)
    metrics = BalancerMetrics(app[REGISTRY_KEY])
    pool = UpstreamPool(config, disc, metrics)
    app[POOL_KEY] = pool

    async def resources(app: web.Application) -> AsyncIterator[None]:
        await disc.start()
        client = upstream_client(config)
        health_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=HEALTH_SESSION_LIMIT),
            timeout=aiohttp.ClientTimeout(total=config.health_timeout),
            trust_env=False,
        )
        app[CLIENT_KEY] = client
        pool.client = client
        proxy = Proxy(config, pool, client, metrics)
        app[PROXY_KEY] = proxy
        checker = asyncio.create_task(pool.run_health_checks(health_session))
        try:
            yield
        finally:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker
            pool.client = None
            await client.close()
            await health_session.close()
            await disc.close()

    async def handle(request: web.Request) -> web.StreamResponse:
        # Not request.app: the fast lane's requests were never routed.
        return await app[PROXY_KEY].handle(request)

    def handle_wire(request: WireRequest, reply: Reply) -> Awaitable[None]:
        return app[PROXY_KEY].handle_wire(request, reply)  # its coroutine: no extra layer

    app.cleanup_ctx.append(resources)
    resource = add_proxy_route(app, handle)
    # Connections start on the wire lane, which proxies below aiohttp's server; what it does
    # not serve (the balancer's own routes, faults, unusual framing) aiohttp serves, where
    # requests that will not be traced skip the router and middlewares (edge.front.wire,
    # edge.front.fastlane).
    app[WIRE_LANE_KEY] = WireLane(resource.canonical, handle_wire, config.buffer_bytes)
    app[FAST_LANE_KEY] = FastLane(resource.canonical, handler=handle)
    return app


def create_balancer_admin_app(app: web.Application) -> web.Application:
    """The admin API (faults, ``observability.app``) plus ``GET /ejections``."""
    admin = create_admin_app(app)
    pool = app[POOL_KEY]

    async def ejections(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "service": pool.service,
                "now": time.time(),
                "instances": pool.state(),
                "events": [e.as_dict() for e in pool.events],
            }
        )

    admin.router.add_get("/ejections", ejections)
    return admin


class CatchAllResource(web.PlainResource):
    """Every path, for the proxy; the app's own routes (``/healthz``...) still win, being more
    specific. Its template is ``/{tail}``, as a catch-all dynamic route ``/{tail:.*}``'s is
    (metrics and spans name the route by it, as the CDN's do), but matching costs no regular
    expression and no unquoting of a ``tail`` nobody reads: ~1 us of the ~20 aiohttp spends on
    a request."""

    def __init__(self) -> None:
        super().__init__("/{tail}")

    def _match(self, path: str) -> dict[str, str]:
        return {}


def add_proxy_route(app: web.Application, handler: Handler) -> CatchAllResource:
    """Send every method on every path not otherwise routed to ``handler``."""
    resource = CatchAllResource()
    app.router.register_resource(resource)  # indexed under "/", tried after specific paths
    resource.add_route("*", handler)
    return resource
