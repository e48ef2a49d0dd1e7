"""Deadlines across real processes: client -> echo A (Chain) -> echo B."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from mesh.discovery import StaticDiscovery
from mesh.resilience import profile_named
from mesh.rpc import Code, RpcClient, RpcError
from tests.support.echo import (
    SERVICE,
    ChainRequest,
    ChainResponse,
    EchoResponse,
    Empty,
    SleepResponse,
    StatsResponse,
)
from tests.support.processes import Proc, Spawner


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


async def start_pair(spawner: Spawner) -> tuple[Proc, Proc]:
    b = spawner.start("tests.support.echo", name="echo-b")
    a = spawner.start(
        "tests.support.echo",
        name="echo-a",
        env={"TESTBED_UPSTREAMS": f"echo={b.address}", "TESTBED_RESILIENCE": "basic"},
    )
    await asyncio.gather(a.wait_ready(), b.wait_ready())
    return a, b


def client_for(session: aiohttp.ClientSession, proc: Proc) -> RpcClient:
    return RpcClient(
        session,
        StaticDiscovery({"echo": [proc.address]}),
        "echo",
        profile=profile_named("basic"),
    )


async def test_deadline_shrinks_and_expires_across_hops(
    spawner: Spawner, session: aiohttp.ClientSession
) -> None:
    a, b = await start_pair(spawner)
    to_a, to_b = client_for(session, a), client_for(session, b)

    # The deadline given to A travels on to B, shrunk by what A already spent.
    answer = await to_a.call(
        f"{SERVICE}/Chain", ChainRequest(method="Echo"), ChainResponse, timeout=3.0
    )
    assert isinstance(answer.downstream, EchoResponse)
    assert answer.instance == "echo-a"
    assert answer.downstream.instance == "echo-b"
    assert answer.deadline_ms is not None
    assert answer.downstream.deadline_ms is not None
    assert 0 < answer.downstream.deadline_ms <= answer.deadline_ms <= 3000

    # Past the deadline: the caller gets deadline_exceeded, and B stops working too.
    started = time.monotonic()
    with pytest.raises(RpcError) as caught:
        await to_a.call(
            f"{SERVICE}/Chain", ChainRequest(method="Sleep", ms=1200), ChainResponse, timeout=0.4
        )
    assert caught.value.code is Code.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.1  # answered before B's sleep would have ended
    await asyncio.sleep(max(0.0, started + 2.5 - time.monotonic()))  # B's sleep is long over
    stats = await to_b.call(f"{SERVICE}/Stats", Empty(), StatsResponse)
    assert stats.sleeps_started == 1
    assert stats.sleeps_completed == 0  # B's handler was cancelled at the deadline


async def test_chain_within_deadline_succeeds(
    spawner: Spawner, session: aiohttp.ClientSession
) -> None:
    a, _ = await start_pair(spawner)
    answer = await client_for(session, a).call(
        f"{SERVICE}/Chain", ChainRequest(method="Sleep", ms=50), ChainResponse, timeout=5.0
    )
    assert isinstance(answer.downstream, SleepResponse)
    assert answer.downstream.slept_ms == 50
