"""Typed application keys under which the process kit keeps its per-app state.

Everything a process needs (config, metric registry, tracer provider, fault state, readiness)
hangs off the ``web.Application`` under these keys, so there is no module-level singleton and a
test can build many apps side by side. ``observability.app`` re-exports them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from mesh.process import ProcessConfig
from observability.errors import ErrorShape

if TYPE_CHECKING:
    from observability.faults import FaultController
    from observability.health import InFlight, Readiness
    from observability.metrics import HttpMetrics

CONFIG_KEY = web.AppKey("testbed_process_config", ProcessConfig)
REGISTRY_KEY = web.AppKey("testbed_registry", CollectorRegistry)
TRACER_PROVIDER_KEY = web.AppKey("testbed_tracer_provider", TracerProvider)
FAULTS_KEY: web.AppKey[FaultController] = web.AppKey("testbed_faults")
READINESS_KEY: web.AppKey[Readiness] = web.AppKey("testbed_readiness")
IN_FLIGHT_KEY: web.AppKey[InFlight] = web.AppKey("testbed_in_flight")
HTTP_METRICS_KEY: web.AppKey[HttpMetrics] = web.AppKey("testbed_http_metrics")
MAIN_APP_KEY = web.AppKey("testbed_main_app", web.Application)
ERROR_SHAPE_KEY = web.AppKey("testbed_error_shape", ErrorShape)
"""The shape the app answers its own errors in (RPC JSON, or problem+json at the edge)."""
"""On the admin app: the public app it administers."""
DRAIN_HOOKS_KEY: web.AppKey[list[Callable[[web.Application], Awaitable[None]]]] = web.AppKey(
    "testbed_drain_hooks"
)
"""Coroutines run as draining begins (readiness already failing, listener still open): e.g.
deregistering from the registry, so callers stop choosing this instance before it closes."""
