"""Network faults through the real Toxiproxy: a toxic on each unit's proxy, or the proxy down.

Toxics are named ``chaos.<fault id>`` so that rollback removes exactly what the engine added and
never a toxic someone else put there (the management plane's region latency on CDN links).
"""

from __future__ import annotations

import asyncio

from chaos.faults.base import Fault
from chaos.faults.toxiproxy import ToxiproxyClient, ToxiproxyError
from chaos.model import NetworkFault

__all__ = ["TOXIC_PREFIX", "NetworkFaultAdapter"]

TOXIC_PREFIX = "chaos."


class NetworkFaultAdapter(Fault):
    spec: NetworkFault

    @property
    def toxic_name(self) -> str:
        return f"{TOXIC_PREFIX}{self.id}"

    def _client(self) -> ToxiproxyClient:
        if self.ctx.toxiproxy is None:
            raise ToxiproxyError("this stack has no Toxiproxy; network faults need it")
        return self.ctx.toxiproxy

    def _proxies(self) -> list[str]:
        proxies = [u.proxy for u in self.units if u.proxy]
        missing = [u.id for u in self.units if not u.proxy]
        if missing:
            raise ToxiproxyError(f"no Toxiproxy proxy in front of {', '.join(missing)}")
        return proxies

    async def apply(self) -> None:
        client = self._client()
        toxic = self.spec.toxic()
        proxies = self._proxies()
        if toxic is None:
            await asyncio.gather(*(client.set_enabled(p, False) for p in proxies))
            return
        kind, attributes = toxic
        await asyncio.gather(
            *(
                client.add_toxic(
                    p,
                    name=self.toxic_name,
                    type=kind,
                    stream=self.spec.stream,
                    toxicity=self.spec.toxicity,
                    attributes=attributes,
                )
                for p in proxies
            )
        )

    async def rollback(self) -> None:
        client = self._client()
        proxies = [u.proxy for u in self.units if u.proxy]
        if self.spec.toxic() is None:
            await asyncio.gather(*(client.set_enabled(p, True) for p in proxies))
        else:
            await asyncio.gather(*(client.remove_toxic(p, self.toxic_name) for p in proxies))
