"""In-service faults through each instance's admin API (``PUT /faults/{kind}``).

Each fault is also given ``duration_s`` a little longer than its own duration, so the process
switches it off by itself even if the runner dies before it can roll back.

``service.crash_after`` arms the services' crash points instead (``PUT /crash-after``): the
instance exits at once right after the named saga step, and supervisord restarts it with
nothing armed; rollback disarms an instance that has not reached the point.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from chaos.faults.base import Fault
from chaos.model import ServiceFault
from chaos.targets import Unit
from mesh.errors import TestbedError

__all__ = ["SAFETY_MARGIN_S", "ServiceFaultAdapter"]

SAFETY_MARGIN_S = 30.0
_HEADER = "X-Admin-Token"


class ServiceFaultAdapter(Fault):
    spec: ServiceFault

    @property
    def kind(self) -> str:
        return {
            "service.error_rate": "error",
            "service.latency": "latency",
            "service.hang": "hang",
            "service.cpu_burn": "cpu",
            "service.memory_leak": "memory",
            "service.crash_after": "crash_after",
        }[self.spec.type]

    def body(self) -> dict[str, Any]:
        s = self.spec
        body: dict[str, Any] = {"duration_s": s.duration + SAFETY_MARGIN_S}
        match self.kind:
            case "error":
                body.update(rate=s.rate, status=s.status)
            case "latency":
                body.update(rate=s.rate, fixed_ms=float(s.latency_ms), jitter_ms=float(s.jitter_ms))
            case "hang":
                body.update(rate=s.rate)
            case "cpu":
                body.update(share=s.share)
            case "memory":
                body.update(mb_per_s=s.mb_per_second, max_mb=s.max_mb)
        if s.routes and self.kind in ("error", "latency", "hang"):
            body["routes"] = list(s.routes)
        return body

    async def _call(self, unit: Unit, method: str) -> None:
        inst = unit.instance
        if inst is None or inst.admin_url is None:
            raise TestbedError(f"{unit.id} has no admin API address; in-service faults need one")
        headers = {_HEADER: self.ctx.stack.admin_token}
        timeout = aiohttp.ClientTimeout(total=5.0)
        body: dict[str, Any] | None
        if self.kind == "crash_after":
            url = f"{inst.admin_url}/crash-after"
            points = list(self.spec.points) if method == "PUT" else []
            method, body = "PUT", {"points": points}
        else:
            url = f"{inst.admin_url}/faults/{self.kind}"
            body = self.body() if method == "PUT" else None
        try:
            async with self.ctx.session.request(
                method, url, json=body, headers=headers, timeout=timeout
            ) as resp:
                if resp.status >= 400:
                    text = (await resp.text())[:300]
                    raise TestbedError(f"{method} {url} answered {resp.status}: {text}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TestbedError(f"{method} {url} failed: {exc or type(exc).__name__}") from None

    async def apply(self) -> None:
        await asyncio.gather(*(self._call(u, "PUT") for u in self.units))

    async def rollback(self) -> None:
        results = await asyncio.gather(
            *(self._call(u, "DELETE") for u in self.units), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if self.kind == "crash_after":
            # An instance that crashed as asked comes back with nothing armed; one still
            # restarting cannot be reached, and needs no disarming either.
            errors = [e for e in errors if "failed:" not in str(e)]
        if errors:
            raise TestbedError("; ".join(str(e) for e in errors))
