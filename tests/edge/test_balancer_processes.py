"""The balancer as a real process over real upstream processes, one of which is killed."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest

from tests.support.processes import Spawner

pytestmark = pytest.mark.slow


async def _healthy_gauge(session: aiohttp.ClientSession, url: str, upstream: str) -> float | None:
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    prefix = f'balancer_upstream_healthy{{upstream="{upstream}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


async def test_killed_gateway_is_ejected_fast_and_no_idempotent_request_fails(
    spawner: Spawner,
) -> None:
    ups = [spawner.start("tests.edge.support_proxy", name=f"gw{i}") for i in range(3)]
    for up in ups:
        await up.wait_ready()
    lb = spawner.start(
        "edge.balancer",
        name="lb",
        env={
            "TESTBED_UPSTREAMS": "gateway=" + ",".join(u.address for u in ups),
            "BALANCER_HEALTH_INTERVAL": "0.25",
        },
    )
    await lb.wait_ready()
    victim = ups[0]
    victim_id = f"gateway@{victim.address}"

    statuses: Counter[int] = Counter()
    served_by: Counter[str] = Counter()
    after_kill: Counter[str] = Counter()
    killed_at: float | None = None
    stop = asyncio.Event()

    async def user(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with session.get(lb.url + "/echo") as resp:
                statuses[resp.status] += 1
                if resp.status == 200:
                    name = (await resp.json())["name"]
                    served_by[name] += 1
                    if killed_at is not None and time.monotonic() - killed_at > 0.1:
                        after_kill[name] += 1

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        users = [asyncio.create_task(user(session)) for _ in range(6)]
        await asyncio.sleep(1.0)
        assert set(served_by) == {"gw0", "gw1", "gw2"}
        assert max(served_by.values()) - min(served_by.values()) <= 0.2 * max(served_by.values())
        victim.kill()
        killed_at = time.monotonic()
        ejected_after: float | None = None
        while time.monotonic() - killed_at < 5:
            if await _healthy_gauge(session, lb.url, victim_id) == 0.0:
                ejected_after = time.monotonic() - killed_at
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*users)

    assert ejected_after is not None, "the killed instance was never marked down"
    assert ejected_after < 1.0, f"ejection took {ejected_after:.2f}s"
    assert set(statuses) == {200}, statuses  # no GET failed, before or after the kill
    assert "gw0" not in after_kill
    assert set(after_kill) == {"gw1", "gw2"}
