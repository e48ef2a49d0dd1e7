"""The in-process transport of RPC: a caller's ``RpcClient`` calls a callee's ``RpcService``
method directly when both live in one process (the monolith baseline, ``services.monolith``).

A ``LocalEndpoint`` names the callee's ``RpcService``, the application whose state its handlers
use, and the ``Instance`` that stands for it in discovery (the hosting process's own address).
``RpcClient(..., local=endpoint)`` then sends every attempt through
``RpcService.invoke_local`` instead of an HTTP POST: the same deadline (the handler runs under
it and calls it makes inherit it), the same idempotency key, the same error codes and retry
rules, the same ``rpc_client_*`` metrics and a CLIENT span with a SERVER span under it (both
marked ``testbed.rpc.transport=inproc``). What disappears is the cost of the hop: no socket,
no HTTP parsing, no Toxiproxy, no second process's middleware.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from mesh.discovery import Discovery, Instance
from mesh.server import RpcService

TRANSPORT_ATTRIBUTE = "testbed.rpc.transport"


@dataclass(frozen=True)
class LocalEndpoint:
    """One service reachable in this process: its RPC methods and the state they use."""

    service: str
    rpc: RpcService
    app: web.Application
    instance: Instance


class LocalDiscovery:
    """Discovery that answers the in-process services itself and asks ``fallback`` for the
    rest (services hosted elsewhere), so one caller may mix local and remote upstreams."""

    def __init__(self, local: dict[str, Instance], fallback: Discovery | None = None) -> None:
        self._local = dict(local)
        self._fallback = fallback

    def instances(self, service: str) -> tuple[Instance, ...]:
        instance = self._local.get(service)
        if instance is not None:
            return (instance,)
        if self._fallback is None:
            return ()
        return tuple(self._fallback.instances(service))

    async def start(self) -> None:
        if self._fallback is not None:
            await self._fallback.start()

    async def close(self) -> None:
        if self._fallback is not None:
            await self._fallback.close()
