"""The process kit every testbed process is built on.

``create_base_app(process)`` returns an aiohttp app that already has the telemetry middleware
(server span, RED metrics, canonical log line, JSON errors, request fault injection),
``/healthz``, ``/readyz`` and ``/metrics``; components add their routes and ``cleanup_ctx``.
``create_admin_app(app)`` is the token-protected admin API (faults) for the admin listener.
``run(app, process)`` configures logging, serves both listeners (on uvloop's event loop when
it is installed) and shuts down gracefully:
on SIGTERM/SIGINT ``/readyz`` fails first while requests are still served, until none is in
flight (``process.drain_seconds`` at most); then the listener closes, requests still running
get up to ``drain_seconds`` more before being cancelled, cleanup runs, the process exits 0.
A process with ``process.reuse_port`` (a single instance a successor takes over:
``observability.handoff``) closes its listener first instead, since its successor already
listens on the same port and receives every new connection.
Once listening, the objects built at start are frozen out of the cyclic garbage collector's
reach (``gc.freeze``), which trims every later collection.

A typical ``__main__.py``::

    config = Config.from_env()
    run(create_app(config), config.process)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from edge.front.fastlane import install_fast_lane
from edge.front.guard import FRONT_LIMITS_KEY, ShapedRunner, install_request_guard
from edge.front.wire import WIRE_LANE_KEY, WireSite
from mesh.errors import TestbedError
from mesh.process import ProcessConfig
from mesh.registration import install_registration
from observability.admin import add_fault_routes, make_admin_middleware
from observability.errors import RPC_ERRORS, ErrorShape
from observability.faults import FaultController
from observability.handoff import handoff_socket
from observability.health import InFlight, Readiness, healthz, readyz
from observability.keys import (
    CONFIG_KEY,
    DRAIN_HOOKS_KEY,
    ERROR_SHAPE_KEY,
    FAULTS_KEY,
    HTTP_METRICS_KEY,
    IN_FLIGHT_KEY,
    MAIN_APP_KEY,
    READINESS_KEY,
    REGISTRY_KEY,
    TRACER_PROVIDER_KEY,
)
from observability.logs import configure_logging, get_logger
from observability.metrics import HttpMetrics, metrics_handler
from observability.middleware import make_telemetry_middleware
from observability.sampling import unsampled_span_maker
from observability.tracing import build_tracer_provider, tracer_name

__all__ = [
    "CONFIG_KEY",
    "DRAIN_HOOKS_KEY",
    "ERROR_SHAPE_KEY",
    "FAULTS_KEY",
    "HTTP_METRICS_KEY",
    "IN_FLIGHT_KEY",
    "MAIN_APP_KEY",
    "READINESS_KEY",
    "REGISTRY_KEY",
    "TRACER_PROVIDER_KEY",
    "create_admin_app",
    "create_base_app",
    "event_loop_factory",
    "new_registry",
    "run",
]

_log = get_logger("observability.app")


def new_registry() -> CollectorRegistry:
    """A registry with this process's CPU, memory, GC and platform metrics."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def create_base_app(
    process: ProcessConfig,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    trace_trust: Callable[[str | None], bool] | None = None,
    error_shape: ErrorShape = RPC_ERRORS,
) -> web.Application:
    """The base app: telemetry + fault middlewares, ``/healthz``, ``/readyz``, ``/metrics``.

    ``trace_trust``: for an app at a trust boundary, whether a request from this peer address
    continues the trace it carries (``observability.middleware``); None: every one does.
    ``error_shape``: how the kit answers errors itself (middleware, faults, wire lane):
    ``PROBLEM_ERRORS`` for the edge apps a client talks to, RPC JSON otherwise.

    ``registry`` defaults to a fresh one (``new_registry()``); ``tracer_provider`` defaults to
    one built from ``OTEL_*`` (``build_tracer_provider``), which the app then owns and shuts
    down (flushing spans) on cleanup. A provider passed in is the caller's to shut down.
    """
    registry = registry if registry is not None else new_registry()
    owns_provider = tracer_provider is None
    provider = tracer_provider if tracer_provider is not None else build_tracer_provider(process)
    metrics = HttpMetrics.register(registry)
    faults = FaultController(registry, error_shape=error_shape)
    in_flight = InFlight()
    app = web.Application(
        middlewares=[
            # Request faults are applied inside the telemetry middleware (one layer less per
            # request than a separate fault middleware; same order: telemetry outermost).
            make_telemetry_middleware(
                provider.get_tracer(tracer_name),
                metrics,
                in_flight,
                faults=faults,
                unsampled=unsampled_span_maker(provider),
                trace_trust=trace_trust,
                error_shape=error_shape,
            ),
        ]
    )
    app[CONFIG_KEY] = process
    app[REGISTRY_KEY] = registry
    app[TRACER_PROVIDER_KEY] = provider
    app[FAULTS_KEY] = faults
    readiness = app[READINESS_KEY] = Readiness()
    # What /readyz answers, for the InstanceNotReady alert (management.alerting).
    Gauge(
        "process_ready",
        "1 while the process wants traffic (/readyz answers 200).",
        registry=registry,
    ).set_function(lambda: 1.0 if readiness.ready else 0.0)
    app[IN_FLIGHT_KEY] = in_flight
    app[HTTP_METRICS_KEY] = metrics
    app[ERROR_SHAPE_KEY] = error_shape
    app[DRAIN_HOOKS_KEY] = []
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler(registry))

    async def stop_faults(app: web.Application) -> None:
        await faults.close()

    app.on_cleanup.append(stop_faults)
    # Every process registers itself when TESTBED_REGISTRY_URL is set (a no-op otherwise).
    install_registration(app, process)
    if owns_provider:

        async def shutdown_tracing(app: web.Application) -> None:
            # Joins the exporter thread and flushes: off the loop.
            await asyncio.to_thread(provider.shutdown)

        app.on_cleanup.append(shutdown_tracing)
    return app


def create_admin_app(main_app: web.Application) -> web.Application:
    """The admin API for ``main_app`` (faults), protected by the process's admin token."""
    process = main_app[CONFIG_KEY]
    admin = web.Application(middlewares=[make_admin_middleware(process.admin_token)])
    admin[MAIN_APP_KEY] = main_app
    admin[CONFIG_KEY] = process
    add_fault_routes(admin)
    return admin


def run(
    main_app: web.Application,
    process: ProcessConfig,
    *,
    admin_app: web.Application | None = None,
) -> None:
    """Serve ``main_app`` (and the admin API) until SIGTERM/SIGINT, then shut down gracefully.

    Without ``admin_app`` the default one (``create_admin_app``) is served when
    ``process.admin_port`` is set. A process whose admin API would listen beyond loopback
    with the default admin token exits at once with one line naming the fix.
    """
    exposed = process.admin_exposure()
    if exposed is not None:  # one clear line, exit 1: no stack trace, nothing served
        raise SystemExit(f"{process.instance_id}: refusing to start: {exposed}")
    configure_logging(process, cache_loggers=True)
    # Process-wide default for code that does not get the provider passed in (libraries);
    # everything of ours takes it from the app.
    trace.set_tracer_provider(main_app[TRACER_PROVIDER_KEY])
    if admin_app is None and process.admin_port is not None:
        admin_app = create_admin_app(main_app)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(_serve(main_app, process, admin_app))
    except OSError as exc:  # e.g. the port is taken: one clear line, exit 1
        _log.error("listen_failed", host=process.host, port=process.port, error=str(exc))
        raise SystemExit(1) from None
    except TestbedError as exc:  # e.g. a database that stayed locked: one clear line, exit 1
        _log.error("startup_failed", error=str(exc))
        raise SystemExit(1) from None


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``run`` uses: uvloop's when it is installed (a dependency), else None
    (asyncio's default).

    uvloop (libuv, Cython) runs the same asyncio code with a cheaper loop and transports:
    every request of every process pays less for its reads, writes and callbacks.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still works
        return None
    return uvloop.new_event_loop


@contextlib.asynccontextmanager
async def _listening(
    app: web.Application, host: str, port: int, drain_seconds: float, *, reuse_port: bool = False
) -> AsyncIterator[web.AppRunner]:
    # handler_cancellation: a client that goes away cancels its handler (and so the handler's
    # outbound calls), as in aiohttp's test server; work that must outlive a request (a saga)
    # runs in a task of its own. At the edge (behind a wire lane, or with the front's limits:
    # the gateway), aiohttp's server keeps the front's keep-alive timeout (aiohttp's own:
    # 3,630 s; the balancer's pooled connections idle out after 30 s, below it).
    # aiohttp's own answers (its parser's 400s) come in the app's error shape, and at the edge
    # a request, head and body, must come within the front's request timeout, also on the
    # connections aiohttp reads (edge.front.guard).
    lane = app.get(WIRE_LANE_KEY)
    limits = lane.limits if lane is not None else app.get(FRONT_LIMITS_KEY)
    shape = app.get(ERROR_SHAPE_KEY, RPC_ERRORS)
    runner = ShapedRunner(
        app,
        shape=shape,
        limits=limits,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=drain_seconds,
        handler_cancellation=True,
        keepalive_timeout=3630.0 if limits is None else limits.keepalive_timeout,
        # What is left of a body an early answer did not read is read and dropped for this
        # long, then the connection closes (aiohttp's default: 10 s).
        lingering_time=10.0 if limits is None else limits.request_timeout,
    )
    await runner.setup()
    assert runner.server is not None
    if install_fast_lane(runner.server, app):  # when it has one (edge.front.fastlane)
        _log.info("fast_lane_on", port=port)
    if limits is not None:  # outermost: a body is whole (or refused) before any lane sees it
        install_request_guard(runner.server, limits.request_timeout, shape)
    site: web.BaseSite
    try:
        # Shared with a successor (observability.handoff); bound here so a taken port fails
        # like TCPSite's, as an OSError naming it.
        sock = handoff_socket(host, port) if reuse_port else None
    except OSError:
        await runner.cleanup()
        raise
    if lane is not None:  # its connections start on the wire lane (edge.front.wire)
        site = WireSite(runner, host, port, lane, drain_seconds, sock=sock)
        _log.info("wire_lane_on", port=port)
    elif sock is not None:
        site = web.SockSite(runner, sock)
    else:
        site = web.TCPSite(runner, host, port)
    try:
        await site.start()
        yield runner
    finally:
        await runner.cleanup()


def _port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


async def _serve(
    main_app: web.Application, process: ProcessConfig, admin_app: web.Application | None
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            _log.warning("shutdown_signal_repeated", signal=sig.name)
        else:
            _log.info("shutdown_signal", signal=sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    readiness = main_app[READINESS_KEY]
    in_flight = main_app[IN_FLIGHT_KEY]
    async with contextlib.AsyncExitStack() as stack:
        admin_runner = None
        if admin_app is not None and process.admin_port is not None:
            admin_runner = await stack.enter_async_context(
                _listening(admin_app, process.host, process.admin_port, 1.0)
            )
        runner = await stack.enter_async_context(
            _listening(
                main_app,
                process.host,
                process.port,
                process.drain_seconds,
                reuse_port=process.reuse_port,
            )
        )
        _log.info(
            "listening",
            host=process.host,
            port=_port(runner),
            admin_port=_port(admin_runner) if admin_runner is not None else None,
            version=process.version,
            reuse_port=process.reuse_port,
        )
        # Everything built so far (modules, the app, its pools) lives until exit: moved out of
        # the collector's generations, the cyclic GC no longer walks it on every collection
        # that the request path's allocations trigger (gc.freeze, as CPython's docs advise).
        gc.collect()
        gc.freeze()
        await stop.wait()
        # 1. Readiness fails first; the listener stays open (so /readyz is seen failing and
        #    late requests are still served) until nothing is in flight, for drain_seconds
        #    at most.
        readiness.draining = True
        _log.info(
            "shutdown_started", in_flight=in_flight.count, drain_seconds=process.drain_seconds
        )
        for hook in main_app[DRAIN_HOOKS_KEY]:
            try:
                async with asyncio.timeout(2.0):
                    await hook(main_app)
            except Exception as exc:  # a failed hook must not stop the shutdown
                name = getattr(hook, "__name__", "?")
                _log.warning("drain_hook_failed", hook=name, error=str(exc))
        if not process.reuse_port:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(process.drain_seconds):
                    await in_flight.wait_idle()
        # else: a successor on the same port takes every new connection; waiting here with the
        # listener open would only keep idle keep-alive connections busy on this process.
        _log.info("drained", in_flight=in_flight.count)
        # 2. Leaving the stack closes the public listener, gives requests still running up to
        #    drain_seconds more (aiohttp's shutdown_timeout), cancels the rest, runs the app's
        #    cleanup (flushing spans), then closes the admin listener.
    _log.info("shutdown_complete", in_flight_left=in_flight.count)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
