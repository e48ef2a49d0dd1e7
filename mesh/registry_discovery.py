"""Registry-backed discovery: the last known instances of each service, kept fresh by watches.

``RegistryDiscovery`` implements ``mesh.discovery.Discovery``. For each service it runs one
long-poll watch (a blocking query with the last index, as with Consul) and swaps in the new list
when it changes. When the registry is down it keeps the last list it saw, so calls keep flowing to
the instances it knew; before the registry ever answered for a service it serves the static
fallback (``TESTBED_UPSTREAMS``). Use ``discovery_for(process, session)`` to get the right
discovery for a process: registry-backed when ``TESTBED_REGISTRY_URL`` is set, static otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence

import aiohttp

from mesh.discovery import Discovery, Instance, StaticDiscovery
from mesh.process import ProcessConfig
from mesh.registry_client import RegistryClient, RegistryError
from observability.logs import get_logger

__all__ = ["RegistryDiscovery", "discovery_for"]

log = get_logger(__name__)


class RegistryDiscovery:
    """Watches services in the registry; ``instances`` returns the last list seen, never blocks."""

    def __init__(
        self,
        registry_url: str,
        services: Iterable[str] = (),
        *,
        fallback: Mapping[str, Sequence[str]] | None = None,
        session: aiohttp.ClientSession | None = None,
        wait_seconds: float = 20.0,
        retry_seconds: float = 0.5,
        max_retry_seconds: float = 5.0,
        start_timeout: float = 2.0,
        max_services: int = 64,
    ) -> None:
        self.registry_url = registry_url
        self._services = list(dict.fromkeys(services))
        self._fallback = StaticDiscovery(fallback or {})
        self._session = session
        self._own_session = session is None
        self._wait = wait_seconds
        self._retry = retry_seconds
        self._max_retry = max_retry_seconds
        self._start_timeout = start_timeout
        self._max_services = max_services
        self._lists: dict[str, tuple[Instance, ...]] = {}
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._client: RegistryClient | None = None
        self._changed = asyncio.Event()

    # ---- Discovery protocol ---------------------------------------------------------------
    def instances(self, service: str) -> Sequence[Instance]:
        found = self._lists.get(service)
        if found is not None:
            return found
        if self._client is not None and service not in self._watches:
            self._watch(service)
        return self._fallback.instances(service)

    async def start(self) -> None:
        if self._client is not None:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self._client = RegistryClient(self._session, self.registry_url)
        for service in self._services:
            self._watch(service)
        # Give the first answers a moment so the first calls see the registry's view.
        pending = [s for s in self._services if s not in self._lists]
        if pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._start_timeout):
                    while any(s not in self._lists for s in pending):
                        await self._wait_change()

    async def close(self) -> None:
        tasks = list(self._watches.values())
        self._watches.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._client = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # ---- extras ----------------------------------------------------------------------------
    def known(self, service: str) -> bool:
        """True once the registry has answered for ``service`` at least once."""
        return service in self._lists

    async def wait_for(self, service: str, *, within: float = 5.0) -> Sequence[Instance]:
        """Wait until the registry has answered for ``service`` (tests, start-up ordering)."""
        async with asyncio.timeout(within):
            while service not in self._lists:
                self.instances(service)
                await self._wait_change()
        return self._lists[service]

    async def _wait_change(self) -> None:
        event = self._changed
        await event.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _watch(self, service: str) -> None:
        if len(self._watches) >= self._max_services:
            log.warning("discovery_too_many_services", service=service, limit=self._max_services)
            return
        self._watches[service] = asyncio.create_task(
            self._watch_loop(service), name=f"discovery-watch-{service}"
        )

    async def _watch_loop(self, service: str) -> None:
        index: int | None = None
        epoch: str | None = None
        delay = self._retry
        while self._client is not None:
            try:
                view = await self._client.service(
                    service, index=index, epoch=epoch, wait=self._wait if index is not None else 0
                )
            except RegistryError as exc:
                if delay == self._retry:
                    log.warning(
                        "registry_watch_failed",
                        service=service,
                        error=str(exc),
                        keeping=len(self._lists.get(service, ())),
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry)
                continue
            delay = self._retry
            if view.epoch != epoch or view.index != index:
                previous = self._lists.get(service)
                self._lists[service] = view.instances
                if previous != view.instances:
                    log.info(
                        "discovery_changed",
                        service=service,
                        instances=[i.address for i in view.instances],
                    )
                self._notify()
            index, epoch = view.index, view.epoch


def discovery_for(
    process: ProcessConfig,
    session: aiohttp.ClientSession | None = None,
    services: Iterable[str] | None = None,
) -> Discovery:
    """The discovery a process should use: registry-backed if configured, else static."""
    if process.registry_url:
        return RegistryDiscovery(
            process.registry_url,
            services if services is not None else process.upstreams,
            fallback=process.upstreams,
            session=session,
        )
    return StaticDiscovery(process.upstreams)
