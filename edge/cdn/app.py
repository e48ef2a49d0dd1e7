"""Build a CDN PoP's app: the process kit plus one catch-all caching route, and its admin app.

Everything hangs off the app: the byte-bounded store, the origin ``ClientSession`` (opened and
closed in a ``cleanup_ctx``), the ``EdgeCache`` handler and the metrics. ``/healthz``,
``/readyz`` and ``/metrics`` are the PoP's own; every other path goes through the cache (fresh
hits of plain GETs on the wire lane, ``edge.front.wire``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import aiohttp
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from edge.cdn.admin import make_purge_handler
from edge.cdn.cache import EdgeCache, fresh_hit, wire_hit
from edge.cdn.config import CdnConfig
from edge.cdn.metrics import CdnMetrics
from edge.cdn.store import CacheStore
from edge.front.fastlane import FAST_LANE_KEY, FastLane
from edge.front.wire import WIRE_LANE_KEY, WireLane
from observability.app import create_admin_app, create_base_app, new_registry
from observability.errors import PROBLEM_ERRORS

STORE_KEY = web.AppKey("cdn_store", CacheStore)
CACHE_KEY = web.AppKey("cdn_cache", EdgeCache)
METRICS_KEY = web.AppKey("cdn_metrics", CdnMetrics)


def origin_session(config: CdnConfig) -> aiohttp.ClientSession:
    """Keep-alive pool to the origin: one per app, bounded, with deadlines."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=config.pool_size, keepalive_timeout=30.0, ttl_dns_cache=300
        ),
        timeout=aiohttp.ClientTimeout(
            total=config.total_timeout,
            sock_connect=config.connect_timeout,
            sock_read=config.origin_timeout,
        ),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


def create_app(
    config: CdnConfig,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> web.Application:
    registry = registry if registry is not None else new_registry()
    store = CacheStore(max_bytes=config.cache_bytes, max_object_bytes=config.max_object_bytes)
    metrics = CdnMetrics(registry, store)
    # The public entry: clients outside CDN_TRUSTED_NETWORKS start new traces here
    # (edge.front.trust), on aiohttp's path and the wire lane alike.
    trace_trust = config.trusted_networks.__contains__
    app = create_base_app(
        config.process,
        registry=registry,
        tracer_provider=tracer_provider,
        trace_trust=trace_trust,
        error_shape=PROBLEM_ERRORS,  # a client's answer: the edge's one error shape
    )
    app[STORE_KEY] = store
    app[METRICS_KEY] = metrics

    async def resources(app: web.Application) -> AsyncIterator[None]:
        session = origin_session(config)
        cache = EdgeCache(config, store, session, app[METRICS_KEY])
        app[CACHE_KEY] = cache
        try:
            yield
        finally:
            await cache.close()
            await session.close()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await request.app[CACHE_KEY].handle(request)

    app.cleanup_ctx.append(resources)
    # Every path, even one with a newline in it once unquoted (``.`` would not match it, and
    # the router's 404 would answer instead of the origin).
    everything = app.router.add_resource(r"/{tail:[\s\S]*}")
    everything.add_route("*", handle)
    # Connections start on the wire lane, which answers fresh hits of plain GETs below
    # aiohttp's server; at the first request it does not answer, the connection goes to
    # aiohttp, where fresh hits of requests that will not be traced are still answered
    # before routing (edge.front.wire, edge.front.fastlane).
    route = everything.canonical
    app[WIRE_LANE_KEY] = WireLane(
        route, answer=partial(wire_hit, store, metrics), trace_trust=trace_trust
    )
    app[FAST_LANE_KEY] = FastLane(route, answer=partial(fresh_hit, store, metrics))
    return app


def create_admin(app: web.Application) -> web.Application:
    """The admin API (faults, and ``POST /admin/purge``) for a PoP app."""
    admin = create_admin_app(app)
    metrics = app[METRICS_KEY]
    admin.router.add_post("/admin/purge", make_purge_handler(app[STORE_KEY], metrics.purged.inc))
    return admin
