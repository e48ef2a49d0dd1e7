"""Self-registration: every process keeps itself in the registry while it runs.

How a process hooks it in (it does nothing unless ``TESTBED_REGISTRY_URL`` is set)::

    from mesh.registration import install_registration
    install_registration(app, config.process)      # before the app starts

That adds a cleanup context that, once the process answers 200 on its own ``/readyz``,
registers ``process.advertised_address`` (the instance's Toxiproxy proxy in the embedded stack,
``TESTBED_ADVERTISE``) with its service, instance id and version, renews it by heartbeat every
third of the TTL, registers again if the registry forgot it (a registry restart), steps out
while one of the app's readiness checks fails (a database it cannot write) and back in once it
passes, stops for good if the management plane drained it, and deregisters on graceful
shutdown (``on_shutdown``, so callers stop picking it before in-flight requests drain).
``registration_ctx(process)`` is the bare cleanup context for apps that want to place it
themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
from aiohttp import web

from mesh.discovery import CANARY_SHARE_KEY
from mesh.process import ProcessConfig
from mesh.registry_client import (
    Drained,
    NotRegistered,
    RegistryClient,
    RegistryError,
)
from observability.keys import DRAIN_HOOKS_KEY, READINESS_KEY
from observability.logs import get_logger

__all__ = ["Registration", "install_registration", "registration_ctx"]

log = get_logger(__name__)


class Registration:
    """Keeps one instance registered until ``stop``; survives registry restarts and outages."""

    def __init__(
        self,
        client: RegistryClient,
        *,
        service: str,
        instance_id: str,
        address: str,
        version: str = "v1",
        metadata: Mapping[str, str] | None = None,
        ttl: float | None = None,
        ready_url: str | None = None,
        http: aiohttp.ClientSession | None = None,
        retry_seconds: float = 0.5,
        healthy: Callable[[], bool] | None = None,
    ) -> None:
        self._client = client
        self.service = service
        self.instance_id = instance_id
        self.address = address
        self.version = version
        self.metadata = dict(metadata or {})
        self._ttl = ttl
        self._ready_url = ready_url
        self._http = http
        self._retry = retry_seconds
        self._healthy = healthy
        self.session_id = secrets.token_hex(8)
        self.registered = False
        self.drained = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"registration-{self.instance_id}")

    async def _wait_ready(self) -> None:
        if self._ready_url is None or self._http is None:
            return
        timeout = aiohttp.ClientTimeout(total=1.0)
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with self._http.get(self._ready_url, timeout=timeout) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)

    async def _register(self) -> float:
        ttl = await self._client.register(
            self.service,
            self.instance_id,
            address=self.address,
            session_id=self.session_id,
            version=self.version,
            metadata=self.metadata,
            ttl=self._ttl,
        )
        self.registered = True
        log.info("registered", service=self.service, address=self.address, ttl=ttl)
        return ttl

    async def _run(self) -> None:
        await self._wait_ready()
        ttl: float | None = None
        while True:
            try:
                if ttl is None:
                    ttl = await self._register()
                else:
                    try:
                        ttl = await self._client.heartbeat(
                            self.service, self.instance_id, self.session_id
                        )
                    except NotRegistered:
                        log.info("registry_forgot_us", service=self.service)
                        ttl = await self._register()
                await asyncio.sleep(max(ttl / 3, 0.05))
                if self._healthy is not None and not self._healthy():
                    await self._step_out()
                    ttl = None
            except Drained:
                self.registered = False
                self.drained = True
                log.info("registration_drained", service=self.service)
                return
            except RegistryError as exc:
                log.warning("registry_unreachable", error=str(exc))
                await asyncio.sleep(self._retry)

    async def _step_out(self) -> None:
        """Out of the registry while a readiness check fails (callers then stop picking this
        instance), back in once it passes."""
        healthy = self._healthy
        if healthy is None:
            return
        await self._client.deregister(self.service, self.instance_id, self.session_id)
        self.registered = False
        log.warning("deregistered_not_ready", service=self.service)
        while not healthy():  # noqa: ASYNC110 - a computed check, nothing to wait on
            await asyncio.sleep(0.1)
        log.info("ready_again", service=self.service)

    async def stop(self, *, deregister: bool = True) -> None:
        """Stop heartbeating and (by default) deregister; never raises on a registry outage."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if deregister and self.registered:
            self.registered = False
            try:
                await self._client.deregister(self.service, self.instance_id, self.session_id)
                log.info("deregistered", service=self.service)
            except RegistryError as exc:
                log.warning("deregister_failed", error=str(exc))


REGISTRATION_KEY: web.AppKey[Registration] = web.AppKey("testbed_registration")
_EXTRA_METADATA_KEY: web.AppKey[dict[str, str]] = web.AppKey("testbed_registration_metadata")


def _checks_pass(app: web.Application) -> Callable[[], bool] | None:
    """Whether the app's readiness checks pass (a database that cannot be written fails
    them); starting and draining are the registration's own business, not asked here."""
    readiness = app.get(READINESS_KEY)
    if readiness is None:
        return None
    return lambda: readiness.problem() is None


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def registration_ctx(
    process: ProcessConfig, *, metadata: Mapping[str, str] | None = None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context keeping ``process`` registered (no-op without a registry URL)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if not process.registry_url:
            yield
            return
        meta = {"pid": str(os.getpid())}
        if process.admin_port:
            meta["admin"] = f"{_loopback(process.host)}:{process.admin_port}"
        if process.canary_share is not None:
            meta[CANARY_SHARE_KEY] = f"{process.canary_share:g}"
        meta.update(metadata or {})
        if _EXTRA_METADATA_KEY in app:
            extra: dict[str, str] = app[_EXTRA_METADATA_KEY]
            meta.update(extra)
        ready_url = (
            f"http://{_loopback(process.host)}:{process.port}/readyz" if process.port else None
        )
        async with aiohttp.ClientSession() as http:
            registration = Registration(
                RegistryClient(http, process.registry_url),
                service=process.service,
                instance_id=process.instance_id,
                address=process.advertised_address,
                version=process.version,
                metadata=meta,
                ready_url=ready_url,
                http=http,
                healthy=_checks_pass(app),
            )
            app[REGISTRATION_KEY] = registration
            await registration.start()
            try:
                yield
            finally:
                await registration.stop()

    return ctx


async def _deregister_early(app: web.Application) -> None:
    registration = app.get(REGISTRATION_KEY)
    if registration is not None:
        await registration.stop()


def install_registration(
    app: web.Application,
    process: ProcessConfig,
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Keep ``process`` registered while ``app`` runs; deregister as shutdown begins.

    Idempotent: ``observability.app.create_base_app`` calls it for every process, so a
    component calls it again only to add ``metadata``, which then wins.
    """
    if _EXTRA_METADATA_KEY in app:
        app[_EXTRA_METADATA_KEY].update(metadata or {})
        return
    app[_EXTRA_METADATA_KEY] = dict(metadata or {})
    app.cleanup_ctx.append(registration_ctx(process))
    app.on_shutdown.append(_deregister_early)
    # Deregister as draining begins, while the listener is still open (run() calls these).
    hooks = app.get(DRAIN_HOOKS_KEY)
    if hooks is not None:
        hooks.append(_deregister_early)
