"""Builds the gateway's aiohttp application: ``create_app(config) -> web.Application``.

On top of the process kit's base app (telemetry, faults, health, metrics) it adds, in order:
the problem+json middleware (outer, so every refusal below it is a problem document), the API
key and rate-limit middleware (``/api/`` only), the routes (:mod:`edge.gateway.routes`), the
upstream RPC clients (a cleanup context) and self-registration in the registry when one is
configured, so the load balancer finds this replica.
"""

from __future__ import annotations

from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from edge.front.guard import FRONT_LIMITS_KEY
from edge.front.wire import FrontLimits
from edge.gateway.auth import KeyRing, auth_middleware
from edge.gateway.config import GatewayConfig
from edge.gateway.metrics import GatewayMetrics
from edge.gateway.problems import problem_middleware
from edge.gateway.ratelimit import RateLimiter
from edge.gateway.routes import setup_routes
from edge.gateway.storefront import Storefront
from edge.gateway.upstreams import (
    DISCOVERY_KEY,
    GATEWAY_CONFIG_KEY,
    GATEWAY_METRICS_KEY,
    upstreams_ctx,
)
from mesh.discovery import Discovery
from mesh.registration import install_registration
from observability.app import REGISTRY_KEY, create_base_app
from observability.errors import PROBLEM_ERRORS


def create_app(
    config: GatewayConfig,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    discovery: Discovery | None = None,
) -> web.Application:
    """The gateway app; ``discovery`` overrides the one built from the config (tests)."""
    app = create_base_app(
        config.process,
        registry=registry,
        tracer_provider=tracer_provider,
        error_shape=PROBLEM_ERRORS,  # a client's answer: the edge's one error shape
    )
    # The edge's limits on the connections aiohttp reads: a request not whole within the
    # request timeout gets a 408 (edge.front.guard; PoPs and the balancer have their lane's).
    app[FRONT_LIMITS_KEY] = FrontLimits()
    metrics = GatewayMetrics.register(app[REGISTRY_KEY])
    app[GATEWAY_CONFIG_KEY] = config
    app[GATEWAY_METRICS_KEY] = metrics
    if discovery is not None:
        app[DISCOVERY_KEY] = discovery
    app.middlewares.append(problem_middleware)
    app.middlewares.append(
        auth_middleware(
            KeyRing(config.api_keys), RateLimiter(max_keys=config.max_tracked_keys), metrics
        )
    )
    setup_routes(app, Storefront.load(config.storefront_key))
    app.cleanup_ctx.append(upstreams_ctx)
    install_registration(app, config.process)
    return app
