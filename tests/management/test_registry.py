"""The registry: register, heartbeat, TTL expiry, drain, watch by long-poll; and its clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from management.registry import RegistryConfig, create_app
from management.registry.store import Draining, RegistryStore, UnknownInstance
from mesh.process import ProcessConfig
from mesh.registration import Registration
from mesh.registry_client import Drained, NotRegistered, RegistryClient
from mesh.registry_discovery import RegistryDiscovery
from tests.support.processes import Spawner


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_store_expires_after_ttl_and_heartbeat_renews() -> None:
    clock = Clock()
    store = RegistryStore(clock=clock)
    store.register("a", "a-1", address="h:1", version="v1", metadata={}, ttl=3, session="s1")
    store.register("a", "a-2", address="h:2", version="v1", metadata={}, ttl=3, session="s2")
    clock.now += 2
    store.heartbeat("a", "a-1", "s1")
    clock.now += 2
    gone = store.expire()
    assert [r.instance_id for r in gone] == ["a-2"]
    assert [r.instance_id for r in store.instances("a")] == ["a-1"]
    with pytest.raises(UnknownInstance):
        store.heartbeat("a", "a-2", "s2")


def test_drained_session_cannot_come_back_but_a_restart_can() -> None:
    store = RegistryStore()
    store.register("a", "a-1", address="h:1", version="v1", metadata={}, ttl=3, session="old")
    index = store.index
    assert store.drain("a", "a-1")
    assert store.index > index
    assert store.instances("a") == []
    with pytest.raises(Draining):
        store.heartbeat("a", "a-1", "old")
    with pytest.raises(Draining):
        store.register("a", "a-1", address="h:1", version="v1", metadata={}, ttl=3, session="old")
    store.register("a", "a-1", address="h:1", version="v2", metadata={}, ttl=3, session="new")
    assert store.instances("a")[0].version == "v2"


@pytest.fixture
async def registry() -> AsyncIterator[TestClient[aiohttp.web.Request, aiohttp.web.Application]]:
    config = RegistryConfig(
        process=ProcessConfig(service="registry", instance_id="registry-test"),
        sweep_seconds=0.05,
    )
    async with TestClient(TestServer(create_app(config))) as client:
        yield client


async def test_register_heartbeat_expire_and_watch(
    registry: TestClient[aiohttp.web.Request, aiohttp.web.Application],
) -> None:
    client = RegistryClient(registry.session, str(registry.make_url("")))
    ttl = await client.register(
        "orders", "orders-1", address="127.0.0.1:9001", session_id="s", version="v3", ttl=0.6
    )
    assert ttl == 0.6
    view = await client.service("orders")
    assert [(i.id, i.address, i.version) for i in view.instances] == [
        ("orders-1", "127.0.0.1:9001", "v3")
    ]
    # A watch from the current index blocks until something changes.
    watch = asyncio.create_task(client.service("orders", index=view.index, wait=10))
    await asyncio.sleep(0.2)
    assert not watch.done()
    await client.register("orders", "orders-2", address="127.0.0.1:9002", session_id="t", ttl=0.6)
    changed = await asyncio.wait_for(watch, 5)
    assert changed.index > view.index
    assert {i.id for i in changed.instances} == {"orders-1", "orders-2"}
    # Heartbeats keep orders-1; orders-2 stops and expires after its TTL.
    for _ in range(6):
        await client.heartbeat("orders", "orders-1", "s")
        await asyncio.sleep(0.2)
    assert [i.id for i in (await client.service("orders")).instances] == ["orders-1"]
    with pytest.raises(NotRegistered):
        await client.heartbeat("orders", "orders-2", "t")
    # Graceful deregistration and drain.
    assert await client.drain("orders", "orders-1")
    with pytest.raises(Drained):
        await client.heartbeat("orders", "orders-1", "s")
    assert (await client.service("orders")).instances == ()


async def test_bad_registration_is_refused_with_the_error_shape(
    registry: TestClient[aiohttp.web.Request, aiohttp.web.Application],
) -> None:
    resp = await registry.put("/v1/services/a/instances/a-1", json={"address": "nope"})
    assert resp.status == 400
    body = await resp.json()
    assert body["code"] == "invalid_argument"
    assert "address" in body["message"]
    assert "trace_id" in body


@pytest.mark.slow
async def test_discovery_keeps_last_list_while_registry_is_down(spawner: Spawner) -> None:
    proc = spawner.start("management.registry", env={"REGISTRY_DEFAULT_TTL": "1"})
    await proc.wait_ready()
    async with aiohttp.ClientSession() as http:
        registration = Registration(
            RegistryClient(http, proc.url),
            service="api",
            instance_id="api-1",
            address="127.0.0.1:9100",
            version="v1",
            retry_seconds=0.1,
        )
        discovery = RegistryDiscovery(
            proc.url, ["api"], session=http, retry_seconds=0.1, fallback={"api": ["127.0.0.1:1"]}
        )
        await registration.start()
        await discovery.start()
        try:
            for _ in range(100):
                if [i.id for i in discovery.instances("api")] == ["api-1"]:
                    break
                await asyncio.sleep(0.05)
            assert [i.address for i in discovery.instances("api")] == ["127.0.0.1:9100"]

            proc.kill()  # the registry is gone: the last list stays
            await asyncio.sleep(1.5)
            assert [i.address for i in discovery.instances("api")] == ["127.0.0.1:9100"]

            proc.start()  # a new, empty registry: the instance registers again by itself
            await proc.wait_ready()
            for _ in range(100):
                if (await RegistryClient(http, proc.url).service("api")).instances:
                    break
                await asyncio.sleep(0.1)
            assert [i.id for i in discovery.instances("api")] == ["api-1"]
            assert registration.registered
        finally:
            await discovery.close()
            await registration.stop()
        assert (await RegistryClient(http, proc.url).service("api")).instances == ()


async def test_registration_steps_out_while_a_readiness_check_fails(
    registry: TestClient[aiohttp.web.Request, aiohttp.web.Application],
) -> None:
    client = RegistryClient(registry.session, str(registry.make_url("")))
    healthy = True
    registration = Registration(
        client,
        service="payments",
        instance_id="payments-1",
        address="127.0.0.1:9200",
        ttl=0.3,
        retry_seconds=0.05,
        healthy=lambda: healthy,
    )

    async def listed() -> list[str]:
        return [i.id for i in (await client.service("payments")).instances]

    async def until(expected: list[str]) -> None:
        for _ in range(100):
            if await listed() == expected:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"registry lists {await listed()}, not {expected}")

    await registration.start()
    try:
        await until(["payments-1"])
        healthy = False  # e.g. its database cannot be written
        await until([])
        assert not registration.registered
        healthy = True
        await until(["payments-1"])
        assert registration.registered
    finally:
        await registration.stop()
    assert await listed() == []
