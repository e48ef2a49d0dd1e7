"""The gateway's way to the services: one ``RpcClient`` per upstream, and RPC errors as HTTP.

``upstreams_ctx`` is the app's cleanup context: it opens the one ``ClientSession`` of the
process, the discovery (the registry when ``TESTBED_REGISTRY_URL`` is set, else the static
``TESTBED_UPSTREAMS``), and an ``RpcClient`` per service with the resilience profile named by
``TESTBED_RESILIENCE`` and the balancing policy ``GATEWAY_BALANCING``; all closed on cleanup.

``rpc_problem`` maps an ``RpcError`` to the HTTP answer a client should see. Codes that are the
client's doing (invalid argument, not found, conflict) keep the upstream's message, written for
people; codes that are the system's (unavailable, deadline, internal) get a generic detail
naming only the upstream, so nothing internal leaks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from edge.gateway.config import GatewayConfig
from edge.gateway.metrics import GatewayMetrics
from edge.gateway.problems import ProblemError
from mesh.discovery import Discovery
from mesh.registry_discovery import discovery_for
from mesh.resilience import ResilienceProfile, profile_for, profile_named
from mesh.rpc import Code, RpcClient, RpcError
from observability.keys import REGISTRY_KEY, TRACER_PROVIDER_KEY

CATALOG = "catalog"
INVENTORY = "inventory"
RECOMMENDATIONS = "recommendations"
ORDERS = "orders"
UPSTREAM_SERVICES = (CATALOG, INVENTORY, RECOMMENDATIONS, ORDERS)


@dataclass(frozen=True)
class Upstreams:
    """The RPC clients the handlers use, one per service."""

    catalog: RpcClient
    inventory: RpcClient
    recommendations: RpcClient
    orders: RpcClient
    profile: ResilienceProfile


GATEWAY_CONFIG_KEY = web.AppKey("gateway_config", GatewayConfig)
GATEWAY_METRICS_KEY = web.AppKey("gateway_metrics", GatewayMetrics)
UPSTREAMS_KEY = web.AppKey("gateway_upstreams", Upstreams)
DISCOVERY_KEY = web.AppKey("gateway_discovery", Discovery)
"""Optional: a discovery supplied by whoever builds the app (tests); else one is made."""


async def upstreams_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the session, discovery and RPC clients; close them when the app stops."""
    config = app[GATEWAY_CONFIG_KEY]
    profile = profile_named(config.process.resilience)
    # Per-call deadlines are set by each RpcClient call; this caps anything they miss.
    timeout = aiohttp.ClientTimeout(total=max(config.checkout_timeout, config.upstream_timeout) + 5)
    connector = aiohttp.TCPConnector(limit=200, limit_per_host=50, keepalive_timeout=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        supplied = app.get(DISCOVERY_KEY)
        discovery = supplied or discovery_for(config.process, session, UPSTREAM_SERVICES)
        await discovery.start()
        try:

            def client(service: str) -> RpcClient:
                return RpcClient(
                    session,
                    discovery,
                    service,
                    profile=profile_for(config.process, service),
                    policy=config.balancing,
                    registry=app[REGISTRY_KEY],
                    tracer_provider=app[TRACER_PROVIDER_KEY],
                    caller=config.process.service,
                )

            app[UPSTREAMS_KEY] = Upstreams(
                catalog=client(CATALOG),
                inventory=client(INVENTORY),
                recommendations=client(RECOMMENDATIONS),
                orders=client(ORDERS),
                profile=profile,
            )
            yield
        finally:
            if supplied is None:
                await discovery.close()


_CLIENT_CODES: dict[Code, tuple[int, str]] = {
    Code.INVALID_ARGUMENT: (400, "invalid-request"),
    Code.OUT_OF_RANGE: (400, "invalid-request"),
    Code.NOT_FOUND: (404, "not-found"),
    Code.ALREADY_EXISTS: (409, "conflict"),
    Code.ABORTED: (409, "conflict"),
    Code.FAILED_PRECONDITION: (409, "conflict"),
}
_SYSTEM_CODES: dict[Code, tuple[int, str, str]] = {
    Code.UNAVAILABLE: (503, "upstream-unavailable", "is unavailable; retry shortly"),
    Code.RESOURCE_EXHAUSTED: (503, "upstream-overloaded", "is overloaded; retry shortly"),
    Code.CANCELED: (503, "upstream-unavailable", "did not finish the request"),
    Code.DEADLINE_EXCEEDED: (504, "upstream-timeout", "did not answer in time"),
}


def rpc_problem(error: RpcError, upstream: str, metrics: GatewayMetrics) -> ProblemError:
    """The HTTP problem a client sees when a call to ``upstream`` failed with ``error``."""
    metrics.upstream_errors.labels(upstream=upstream, code=error.code.value).inc()
    if error.code in _CLIENT_CODES:
        status, slug = _CLIENT_CODES[error.code]
        return ProblemError(status, slug, error.message)
    if error.code in _SYSTEM_CODES:
        status, slug, what = _SYSTEM_CODES[error.code]
        headers = {"Retry-After": "1"} if status == 503 else None
        return ProblemError(status, slug, f"the {upstream} service {what}", headers=headers)
    # internal, unknown, data_loss, unimplemented, permission_denied, unauthenticated: the
    # upstream (or the gateway's use of it) is broken; nothing the client can fix.
    return ProblemError(502, "upstream-error", f"the {upstream} service failed")
