"""The five services as real processes for tests: start, call, audit, stop (via a Spawner)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.support.processes import Proc, Spawner, free_port

SERVICES = ("catalog", "inventory", "payments", "recommendations", "orders")
UPSTREAMS = {
    "orders": ("catalog", "inventory", "payments"),
    "recommendations": ("catalog",),
}
ADMIN_TOKEN = "testbed-admin"


@dataclass
class Stack:
    spawner: Spawner
    procs: dict[str, Proc] = field(default_factory=dict)

    def addresses(self) -> dict[str, str]:
        return {name: proc.address for name, proc in self.procs.items()}

    @property
    def audit_addresses(self) -> dict[str, str]:
        return {
            n: self.procs[n].address
            for n in ("orders", "inventory", "payments", "catalog")
            if n in self.procs
        }


def start_stack(
    spawner: Spawner,
    *,
    env: Mapping[str, str] | None = None,
    per_service: Mapping[str, Mapping[str, str]] | None = None,
    services: tuple[str, ...] = SERVICES,
) -> Stack:
    """Start ``services`` with upstreams wired by static discovery; waits until all are ready."""
    ports = {name: free_port() for name in services}
    stack = Stack(spawner)
    for name in services:
        upstreams = ";".join(
            f"{u}=127.0.0.1:{ports[u]}" for u in UPSTREAMS.get(name, ()) if u in ports
        )
        proc_env = {"TESTBED_SERVICE": name, "TESTBED_UPSTREAMS": upstreams, **(env or {})}
        proc_env.update((per_service or {}).get(name, {}))
        stack.procs[name] = spawner.start(
            f"services.{name}", name=name, env=proc_env, port=ports[name]
        )

    async def ready() -> None:
        await asyncio.gather(*(p.wait_ready(within=60) for p in stack.procs.values()))

    asyncio.run(ready())
    return stack


async def rpc(
    session: aiohttp.ClientSession,
    proc: Proc,
    method_path: str,
    body: Any,
    *,
    key: str | None = None,
    deadline: float = 20.0,
) -> tuple[int, dict[str, Any]]:
    """POST one Connect call; returns (HTTP status, JSON body)."""
    headers = {"Content-Type": "application/json", "Connect-Timeout-Ms": str(int(deadline * 1000))}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with session.post(
        f"{proc.url}/{method_path}",
        data=json.dumps(body),
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=deadline + 5),
    ) as resp:
        data: dict[str, Any] = await resp.json(content_type=None)
        return resp.status, data


async def arm_crash(session: aiohttp.ClientSession, proc: Proc, points: list[str]) -> None:
    async with session.put(
        f"{proc.admin_url}/crash-after",
        json={"points": points},
        headers={"X-Admin-Token": ADMIN_TOKEN},
        timeout=aiohttp.ClientTimeout(total=5),
    ) as resp:
        assert resp.status == 200, await resp.text()


async def set_provider(session: aiohttp.ClientSession, proc: Proc, **settings: Any) -> None:
    """Change payments' simulated provider at run time (admin ``PATCH /provider``)."""
    async with session.patch(
        f"{proc.admin_url}/provider",
        json=settings,
        headers={"X-Admin-Token": ADMIN_TOKEN},
        timeout=aiohttp.ClientTimeout(total=5),
    ) as resp:
        assert resp.status == 200, await resp.text()
