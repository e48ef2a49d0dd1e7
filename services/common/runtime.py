"""Pieces every service's ``create_app`` uses: its database path, an HTTP session, RPC clients,
background loops, and the translation of domain errors into the one RPC error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from opentelemetry import context as otel_context

from mesh.discovery import Discovery
from mesh.local import LocalEndpoint
from mesh.process import ProcessConfig
from mesh.resilience import profile_for
from mesh.rpc import Code, RpcClient, RpcError
from observability.app import MAIN_APP_KEY, REGISTRY_KEY, TRACER_PROVIDER_KEY, create_admin_app
from observability.logs import get_logger
from services.common.crash import CrashSwitch
from services.common.errors import DomainError

T = TypeVar("T")
CleanupCtx = Callable[[web.Application], AsyncIterator[None]]

_log = get_logger("services.runtime")

HTTP_SESSION_KEY = web.AppKey("services_http_session", aiohttp.ClientSession)
DISCOVERY_KEY = web.AppKey("services_discovery", Discovery)
CRASH_KEY = web.AppKey("services_crash_switch", CrashSwitch)
# Set by the monolith (services.monolith): the services living in this process, which
# ``rpc_client`` then calls in-process (mesh.local) instead of over HTTP.
LOCAL_ENDPOINTS_KEY: web.AppKey[dict[str, LocalEndpoint]] = web.AppKey("services_local_endpoints")


def database_path(process: ProcessConfig) -> Path:
    """``<run_dir>/data/<service>.sqlite3``: shared by the instances of one service only."""
    return process.run_dir / "data" / f"{process.service}.sqlite3"


@contextlib.contextmanager
def rpc_errors() -> Iterator[None]:
    """Turn a ``DomainError`` raised in the block into the ``RpcError`` with its code."""
    try:
        yield
    except DomainError as e:
        raise RpcError(Code(e.code), e.message) from None


def http_session_ctx(*, total_timeout: float = 30.0) -> CleanupCtx:
    """One ``ClientSession`` per app (every call also sets its own deadline)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=total_timeout, connect=2.0),
            connector=aiohttp.TCPConnector(limit=200),
        )
        app[HTTP_SESSION_KEY] = session
        discovery = app[DISCOVERY_KEY]
        await discovery.start()
        try:
            yield
        finally:
            await discovery.close()
            await session.close()

    return ctx


def rpc_client(app: web.Application, service: str, process: ProcessConfig) -> RpcClient:
    """A client for ``service`` on this app's session, discovery, metrics and tracer; when
    ``service`` lives in this process (the monolith), its calls go in-process."""
    local = app.get(LOCAL_ENDPOINTS_KEY)
    return RpcClient(
        app[HTTP_SESSION_KEY],
        app[DISCOVERY_KEY],
        service,
        profile=profile_for(process, service),
        registry=app[REGISTRY_KEY],
        tracer_provider=app[TRACER_PROVIDER_KEY],
        caller=process.service,
        local=local.get(service) if local is not None else None,
    )


def periodic_ctx(
    name: str, interval: float, tick: Callable[[web.Application], Awaitable[Any]]
) -> CleanupCtx:
    """Run ``tick(app)`` every ``interval`` seconds while the app runs; failures are logged."""

    async def loop(app: web.Application) -> None:
        while True:
            try:
                await tick(app)
            except Exception as e:
                _log.error("background_task_failed", task=name, error=repr(e))
            await asyncio.sleep(interval)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(loop(app), name=name)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ctx


def detached(coro: Coroutine[Any, Any, T], tasks: set[asyncio.Task[Any]]) -> asyncio.Task[T]:
    """Run ``coro`` as a task of its own, outside the current request's deadline.

    The task gets a fresh context (so the RPC deadline of the request that started it does not
    shrink its calls) carrying only the current trace context; it is kept in ``tasks`` until it
    ends, so shutdown can wait for it.
    """
    trace_ctx = otel_context.get_current()

    async def run() -> T:
        token = otel_context.attach(trace_ctx)
        try:
            return await coro
        finally:
            otel_context.detach(token)

    def done(task: asyncio.Task[T]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("detached_task_failed", task=task.get_name(), error=repr(task.exception()))

    task = asyncio.create_task(run(), context=contextvars.Context())
    tasks.add(task)
    task.add_done_callback(done)
    return task


def drain_tasks_ctx(key: web.AppKey[set[asyncio.Task[Any]]], grace: float) -> CleanupCtx:
    """Give detached tasks ``grace`` seconds to finish at shutdown, then cancel them."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        running: set[asyncio.Task[Any]] = set()
        app[key] = running
        yield
        tasks = list(running)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    return ctx


async def _crash_points(request: web.Request) -> web.Response:
    switch = request.app[MAIN_APP_KEY][CRASH_KEY]
    if request.method == "PUT":
        try:
            body = await request.json()
            points = body["points"]
            if not isinstance(points, list) or not all(isinstance(p, str) for p in points):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                {"code": "invalid_argument", "message": 'send {"points": ["<step>", ...]}'},
                status=400,
            )
        switch.armed = set(points)
    return web.json_response({"points": sorted(switch.armed)})


def create_service_admin_app(main_app: web.Application) -> web.Application:
    """The admin API (faults) plus ``GET/PUT /crash-after`` when the service has crash hooks.

    ``PUT /crash-after {"points": ["charged"]}`` arms crash points at run time (testing hook,
    see ``services.common.crash``); ``{"points": []}`` disarms them.
    """
    admin = create_admin_app(main_app)
    if CRASH_KEY in main_app:
        admin.router.add_get("/crash-after", _crash_points)
        admin.router.add_put("/crash-after", _crash_points)
    return admin
