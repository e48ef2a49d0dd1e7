"""Builds the monolith: the hosted services' own apps inside one process, one listener.

Each hosted service is built by its own ``create_app`` (its code, its database file, its
background loops, its registration under its own name), mounted as a sub-application so its
start-up and clean-up run with the process. Its RPC routes are served on the monolith's root
app (``RpcService.add_routes(root, state=<service app>)``), so a gateway reaches every hosted
service at the monolith's one address; calls between hosted services go in-process
(``mesh.local``): the caller's ``RpcClient`` calls the callee's ``RpcService`` method directly.

One telemetry stack for the process: the root app's middleware (server spans, RED metrics,
request faults) sees every request that crosses the process boundary; the hosted services'
domain metrics (saga, database, RPC client) are exposed on the root's ``/metrics`` with a
``hosted_service`` label; every span comes from the one tracer provider.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from mesh.discovery import Discovery, Instance
from mesh.local import LocalDiscovery, LocalEndpoint
from mesh.registry_discovery import discovery_for
from mesh.server import RpcService
from observability.app import (
    DRAIN_HOOKS_KEY,
    READINESS_KEY,
    REGISTRY_KEY,
    TRACER_PROVIDER_KEY,
    create_base_app,
)
from services import catalog, inventory, orders, payments, recommendations
from services.catalog.handlers import service as catalog_rpc
from services.common.runtime import CRASH_KEY, LOCAL_ENDPOINTS_KEY
from services.inventory.handlers import service as inventory_rpc
from services.monolith.config import SERVICES, Config, Hosted
from services.orders.handlers import service as orders_rpc
from services.payments.handlers import service as payments_rpc
from services.recommendations.handlers import service as recommendations_rpc

RPC_SERVICES: dict[str, RpcService] = {
    "catalog": catalog_rpc,
    "recommendations": recommendations_rpc,
    "inventory": inventory_rpc,
    "payments": payments_rpc,
    "orders": orders_rpc,
}
HOSTED_APPS_KEY = web.AppKey("monolith_hosted_apps", dict[str, web.Application])
HOSTED_LABEL = "hosted_service"
# Per-service families that would say nothing here (the root app serves the requests and
# holds the fault controller) or clash with the root's own (process_ready: the root's /readyz).
_SKIPPED_PREFIXES = ("http_server_", "testbed_faults_", "process_ready")


class HostedMetrics:
    """A collector exposing the hosted services' registries on the root one, each sample
    labelled with its service (two services may both count, e.g., ``rpc_client_calls``)."""

    def __init__(self, registries: dict[str, CollectorRegistry]) -> None:
        self._registries = registries

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for service, registry in self._registries.items():
            for family in registry.collect():
                if family.name.startswith(_SKIPPED_PREFIXES):
                    continue
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    out.samples.append(
                        sample._replace(labels={**sample.labels, HOSTED_LABEL: service})
                    )
        yield from merged.values()


def _build(
    hosted: Hosted,
    registry: CollectorRegistry,
    root: web.Application,
    discovery: Discovery,
) -> web.Application:
    provider = root[TRACER_PROVIDER_KEY]
    c = hosted.config
    if isinstance(c, orders.Config):
        return orders.create_app(
            c, registry=registry, tracer_provider=provider, discovery=discovery
        )
    if isinstance(c, recommendations.Config):
        return recommendations.create_app(
            c, registry=registry, tracer_provider=provider, discovery=discovery
        )
    if isinstance(c, catalog.Config):
        return catalog.create_app(c, registry=registry, tracer_provider=provider)
    if isinstance(c, inventory.Config):
        return inventory.create_app(c, registry=registry, tracer_provider=provider)
    return payments.create_app(c, registry=registry, tracer_provider=provider)


def _ready_check(app: web.Application) -> Callable[[], str | None]:
    def check() -> str | None:
        readiness = app[READINESS_KEY]
        return None if readiness.ready else readiness.reason

    return check


def create_app(config: Config) -> web.Application:
    """The monolith's root app: every hosted service's RPC routes, their lifecycles, one
    ``/healthz``, ``/readyz`` (ready when every hosted service is) and ``/metrics``."""
    root = create_base_app(config.process)
    address = config.process.advertised_address
    names = config.names
    local = {n: Instance(id=f"{n}@{address}", address=address) for n in names}
    remote = tuple(n for n in SERVICES if n not in names)
    endpoints: dict[str, LocalEndpoint] = {}
    registries: dict[str, CollectorRegistry] = {}
    apps: dict[str, web.Application] = {}
    for hosted in config.hosted:
        fallback = discovery_for(hosted.config.process, services=remote) if remote else None
        registry = registries[hosted.name] = CollectorRegistry()
        app = _build(hosted, registry, root, LocalDiscovery(local, fallback))
        app[LOCAL_ENDPOINTS_KEY] = endpoints  # filled for every hosted service below
        rpc = RPC_SERVICES[hosted.name]
        rpc.add_routes(root, state=app)
        endpoints[hosted.name] = LocalEndpoint(hosted.name, rpc, app, local[hosted.name])
        # A sub-application: its start-up (database, loops, registration) and clean-up run
        # with the root's; its own /healthz etc. stay reachable under the prefix.
        root.add_subapp(f"/_hosted/{hosted.name}/", app)
        root[READINESS_KEY].add_check(hosted.name, _ready_check(app))
        apps[hosted.name] = app
    root[HOSTED_APPS_KEY] = apps
    root[REGISTRY_KEY].register(HostedMetrics(registries))
    if "orders" in apps:
        # The admin API's /crash-after arms orders' saga crash points: crashing orders is
        # crashing the whole monolith (exit 137), as a real monolith would.
        root[CRASH_KEY] = apps["orders"][CRASH_KEY]

    async def drain_hosted(root: web.Application) -> None:
        # Each hosted service steps out of the registry as the monolith starts draining.
        for app in apps.values():
            for hook in app[DRAIN_HOOKS_KEY]:
                await hook(app)

    root[DRAIN_HOOKS_KEY].append(drain_hosted)
    return root
