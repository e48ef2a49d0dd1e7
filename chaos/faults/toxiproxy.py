"""An asyncio client for Toxiproxy's API, built on the ``toxiproxy-python`` library.

The library is synchronous (``requests``), so every call runs in a worker thread
(``asyncio.to_thread``) and the runner's loop stays responsive. Where the library falls short,
this module says so and calls Toxiproxy's HTTP API directly with aiohttp:

* It keeps the server address in class attributes of ``toxiproxy.api.APIConsumer`` (one
  address per Python process). Calls here set the address and run under one lock, so two
  clients pointing at different servers cannot mix them up.
* Its HTTP calls have no timeout; a wedged server would block a worker thread for ever. Each
  call is therefore bounded with ``asyncio.wait_for`` (the runner moves on and reports the
  failure), and the reachability check (``ping``) goes directly to ``GET /version`` with an
  explicit ``aiohttp.ClientTimeout`` so an unreachable server is found before anything starts.
* It has no call to read one proxy's details without listing every proxy, which is fine at
  testbed sizes, so it is used as is.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import requests
from toxiproxy import Proxy, Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import NotFound
from yarl import URL

from mesh.errors import TestbedError

__all__ = ["ToxicInfo", "ToxiproxyClient", "ToxiproxyError"]

T = TypeVar("T")
_API_LOCK = threading.Lock()
"""Guards the library's process-wide ``APIConsumer.host/port`` for the length of one call."""


class ToxiproxyError(TestbedError):
    """Toxiproxy could not be reached or refused a request."""


@dataclass(frozen=True)
class ToxicInfo:
    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, Any]


class ToxiproxyClient:
    """Async calls to one Toxiproxy server at ``url`` (``http://host:port``)."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        parsed = URL(url)
        if not parsed.host or parsed.port is None:
            raise ToxiproxyError(f"Toxiproxy API address {url!r} is not http://host:port")
        self.url = url.rstrip("/")
        self._host = parsed.host
        self._port = parsed.port
        self.timeout = timeout

    def _locked(self, fn: Callable[[], T]) -> T:
        with _API_LOCK:
            APIConsumer.host = self._host
            APIConsumer.port = self._port
            return fn()

    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._locked, fn), timeout=self.timeout)
        except TimeoutError:
            raise ToxiproxyError(
                f"Toxiproxy at {self.url}: {what} took over {self.timeout}s"
            ) from None
        except requests.RequestException as exc:
            raise ToxiproxyError(f"Toxiproxy at {self.url}: {what} failed: {exc}") from None

    async def ping(self) -> str:
        """The server's version; raises ``ToxiproxyError`` if it does not answer in time."""
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.url + "/version") as resp,
            ):
                if resp.status != 200:
                    raise ToxiproxyError(f"Toxiproxy at {self.url} answered {resp.status}")
                return (await resp.text()).strip()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ToxiproxyError(
                f"Toxiproxy API at {self.url} is not reachable ({exc or type(exc).__name__}); "
                "is the stack up? (testbed up)"
            ) from None

    def _proxy(self, name: str) -> Proxy:
        proxy = Toxiproxy().get_proxy(name)
        if proxy is None:
            raise ToxiproxyError(f"Toxiproxy at {self.url} has no proxy {name!r}")
        return proxy

    async def proxies(self) -> dict[str, bool]:
        """Every proxy's name and whether it is enabled."""
        found = await self._run("listing proxies", lambda: Toxiproxy().proxies())
        return {name: bool(p.enabled) for name, p in found.items()}

    async def create_proxy(self, name: str, upstream: str, listen: str) -> None:
        await self._run(
            f"creating proxy {name}",
            lambda: Toxiproxy().create(upstream=upstream, name=name, listen=listen),
        )

    async def delete_proxy(self, name: str) -> None:
        def delete() -> None:
            proxy = Toxiproxy().get_proxy(name)
            if proxy is not None:
                proxy.destroy()

        await self._run(f"deleting proxy {name}", delete)

    async def add_toxic(
        self,
        proxy: str,
        *,
        name: str,
        type: str,
        stream: str,
        toxicity: float,
        attributes: dict[str, Any],
    ) -> None:
        def add() -> None:
            self._proxy(proxy).add_toxic(
                name=name, type=type, stream=stream, toxicity=toxicity, attributes=attributes
            )

        await self._run(f"adding toxic {name} to {proxy}", add)

    async def remove_toxic(self, proxy: str, name: str) -> bool:
        """Remove a toxic; False if it was not there (already removed)."""

        def remove() -> bool:
            try:
                return bool(self._proxy(proxy).destroy_toxic(name))
            except NotFound:
                return False

        return await self._run(f"removing toxic {name} from {proxy}", remove)

    async def toxics(self, proxy: str) -> list[ToxicInfo]:
        def read() -> list[ToxicInfo]:
            return [
                ToxicInfo(t.name, t.type, t.stream, float(t.toxicity), dict(t.attributes))
                for t in self._proxy(proxy).toxics().values()
            ]

        return await self._run(f"listing toxics of {proxy}", read)

    async def set_enabled(self, proxy: str, enabled: bool) -> None:
        def switch() -> None:
            p = self._proxy(proxy)
            if enabled:
                p.enable()
            else:
                p.disable()

        await self._run(f"{'enabling' if enabled else 'disabling'} {proxy}", switch)
