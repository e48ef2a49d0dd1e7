"""Ejection and readmission in the balancer's pool (pure, a fake clock), and the first-byte
deadline against real upstream apps on real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from edge.balancer import BalancerConfig, create_app
from edge.balancer.app import POOL_KEY, create_balancer_admin_app
from edge.balancer.metrics import BalancerMetrics
from edge.balancer.pool import UpstreamPool
from mesh.discovery import Instance, StaticDiscovery
from mesh.process import ProcessConfig
from tests.edge.support_proxy import Upstream

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


class _Clock:
    """Wall-clock time the test moves; holds the pool's metrics registry too."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.registry = CollectorRegistry()

    def __call__(self) -> float:
        return self.now


class _Client:
    """Stands in for the upstream client's view of live traffic (what the pool asks)."""

    def __init__(self, stalled: bool = False) -> None:
        self.is_stalled = stalled
        self.aborted: list[str] = []

    def stalled(self, address: str, since: float) -> bool:
        return self.is_stalled

    def abort_waiting(self, address: str, reason: str) -> int:
        self.aborted.append(address)
        return 2


def _config(**overrides: object) -> BalancerConfig:
    process = ProcessConfig(service="balancer", instance_id="lb-test")
    return BalancerConfig(process=process, **overrides)  # type: ignore[arg-type]


def _pool(count: int = 2, **overrides: object) -> tuple[UpstreamPool, list[Instance], _Clock]:
    clock = _Clock()
    registry = CollectorRegistry()
    discovery = StaticDiscovery({"gateway": [f"127.0.0.1:{9000 + i}" for i in range(count)]})
    pool = UpstreamPool(_config(**overrides), discovery, BalancerMetrics(registry), clock=clock)
    clock.registry = registry
    return pool, list(pool.candidates()), clock


def _sample(clock: _Clock, name: str, **labels: str) -> float | None:
    value = clock.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def test_failed_checks_take_an_instance_out_after_fall_and_back_after_rise() -> None:
    pool, (a, b), clock = _pool()
    pool.check_result(a, False)
    assert pool.is_up(a)  # one failure is not enough (fall 2)
    clock.now += 0.5
    pool.check_result(a, False)
    assert not pool.is_up(a)
    assert list(pool.candidates()) == [b]
    pool.check_result(a, True)
    assert not pool.is_up(a)  # one pass is not enough (rise 2)
    pool.check_result(a, False)
    pool.check_result(a, True)
    assert not pool.is_up(a)  # the passes must be in a row
    clock.now += 1.0
    pool.check_result(a, True)
    assert pool.is_up(a)
    events = [(e.event, e.reason, e.at) for e in pool.events]
    assert events == [("ejected", "health_check", 1000.5), ("readmitted", "health_check", 1001.5)]
    ejections = _sample(
        clock, "balancer_upstream_ejections_total", upstream=a.id, reason="health_check"
    )
    assert ejections == 1.0
    last = _sample(clock, "balancer_upstream_last_ejection_timestamp_seconds", upstream=a.id)
    assert last == 1000.5
    assert _sample(clock, "balancer_upstream_healthy", upstream=a.id) == 1.0


def test_refused_connection_ejects_at_once_and_only_checks_readmit() -> None:
    pool, (a, _b), _ = _pool()
    pool.connect_failed(a)
    assert not pool.is_up(a)
    assert pool.state()[0]["reason"] == "connect_error"
    for _ in range(10):
        pool.answered(a, 200)  # a late answer from before does not bring it back
    assert not pool.is_up(a)
    pool.check_result(a, True)
    pool.check_result(a, True)
    assert pool.is_up(a)


def test_unresponsive_check_ejects_at_once_and_moves_waiting_requests() -> None:
    pool, (a, _), _ = _pool()
    client = _Client(stalled=True)
    pool.client = client
    pool.check_result(a, False, at_once="unresponsive")
    assert not pool.is_up(a)
    assert client.aborted == [a.address]
    assert [e.reason for e in pool.events] == ["unresponsive"]


def test_a_refused_check_ejects_at_once_without_moving_requests() -> None:
    pool, (a, _), _ = _pool()
    client = _Client()
    pool.client = client
    pool.check_result(a, False, at_once="connect_error")
    assert not pool.is_up(a)
    assert client.aborted == []  # nothing is waiting on a refused connection


def test_consecutive_live_failures_eject_and_a_success_resets_the_count() -> None:
    pool, (a, _), _ = _pool(outlier_failures=3)
    pool.answered(a, 502)
    pool.live_failure(a)
    pool.answered(a, 200)
    pool.answered(a, 503)
    pool.live_failure(a)
    assert pool.is_up(a)  # never three in a row
    pool.live_failure(a)
    assert not pool.is_up(a)
    assert [e.reason for e in pool.events] == ["consecutive_failures"]


def test_live_failures_never_eject_the_last_instance_in_rotation() -> None:
    pool, (a, b), _ = _pool(outlier_failures=2)
    for _ in range(2):
        pool.answered(a, 500)
    assert not pool.is_up(a)
    for _ in range(5):
        pool.answered(b, 500)
    assert pool.is_up(b)  # the last one in rotation stays
    assert list(pool.candidates()) == [b]


def test_an_unresponsive_check_never_ejects_the_last_instance_but_fall_does() -> None:
    pool, (a, b), _ = _pool()
    client = _Client(stalled=True)
    pool.client = client
    pool.connect_failed(a)
    pool.check_result(b, False, at_once="unresponsive")
    assert pool.is_up(b)  # alone in rotation: a stall is not taken for a freeze
    assert client.aborted == []
    pool.check_result(b, False, at_once="unresponsive")
    assert not pool.is_up(b)  # two failed checks in a row (fall): out, whatever is left
    assert [e.reason for e in pool.events] == ["connect_error", "health_check"]


def test_every_instance_out_means_panic_over_all_of_them() -> None:
    pool, (a, b), _ = _pool()
    pool.connect_failed(a)
    pool.check_result(b, False)
    pool.check_result(b, False)
    assert not pool.is_up(a)
    assert not pool.is_up(b)
    assert list(pool.candidates()) == [a, b]  # tried rather than a 502 without trying


def test_an_instance_that_left_discovery_is_forgotten() -> None:
    clock = _Clock()
    discovery = StaticDiscovery({"gateway": ["127.0.0.1:9000", "127.0.0.1:9001"]})
    pool = UpstreamPool(_config(), discovery, BalancerMetrics(CollectorRegistry()), clock=clock)
    a, _ = pool.candidates()
    pool.connect_failed(a)
    discovery.update("gateway", ["127.0.0.1:9001"])
    assert [i.address for i in pool.candidates()] == ["127.0.0.1:9001"]
    assert [s["address"] for s in pool.state()] == ["127.0.0.1:9001"]


# -- on real sockets: a frozen instance accepts connections and never answers ---------------


class Silent:
    """A frozen instance, as SIGSTOP leaves one: the kernel accepts connections and takes the
    requests' bytes; nothing ever answers."""

    def __init__(self) -> None:
        self.received = bytearray()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> Silent:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def count(self, request_line: bytes) -> int:
        return self.received.count(request_line)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        while data := await reader.read(65536):
            self.received += data

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def silent_and_live() -> AsyncIterator[tuple[Silent, Upstream]]:
    silent = await Silent().start()
    live = await Upstream("live").start()
    yield silent, live
    await silent.stop()
    await live.stop()


def _balancer(addresses: list[str], **overrides: object) -> web.Application:
    return create_app(
        _config(**overrides),
        discovery=StaticDiscovery({"gateway": addresses}),
        registry=CollectorRegistry(),
        tracer_provider=TracerProvider(),
    )


async def test_first_byte_timeout_repeats_safe_requests_once_and_504s_the_others(
    aiohttp_client: ClientFactory, silent_and_live: tuple[Silent, Upstream]
) -> None:
    silent, live = silent_and_live
    # No check ends during the test and no passive ejection: every second request meets the
    # frozen one.
    app = _balancer(
        [silent.address, live.address],
        health_interval=60.0,
        health_timeout=60.0,
        first_byte_timeout=0.3,
        outlier_failures=99,
    )
    client = await aiohttp_client(app)
    for _ in range(4):
        async with client.get("/echo") as resp:
            assert resp.status == 200  # the frozen one's GETs repeated on the live one
    for _ in range(2):
        headers = {"Idempotency-Key": "k-1"}
        async with client.post("/echo", data=b"x", headers=headers) as resp:
            assert resp.status == 200  # keyed: as safe as a GET
    statuses = []
    for _ in range(2):
        async with client.post("/echo", data=b"x") as resp:
            statuses.append(resp.status)
            if resp.status == 504:
                assert resp.content_type == "application/problem+json"
    assert sorted(statuses) == [200, 504]  # the unkeyed POST that met it: 504, not repeated
    assert silent.count(b"POST /echo") == 2  # one keyed, one unkeyed: each sent once there
    assert live.state.hits["/echo"] == 4 + 2 + 1
    metrics = await (await client.get("/metrics")).text()
    series = f'{{code="timeout",upstream="gateway@{silent.address}"}}'
    assert f"balancer_upstream_requests_total{series} 4.0" in metrics


async def test_a_frozen_instance_under_load_is_ejected_and_its_requests_move_at_once(
    aiohttp_client: ClientFactory, silent_and_live: tuple[Silent, Upstream]
) -> None:
    silent, live = silent_and_live
    # A first-byte timeout far off: only the health check's verdict can move the requests.
    app = _balancer(
        [silent.address, live.address],
        health_interval=0.05,
        health_timeout=0.2,
        first_byte_timeout=20.0,
        health_fall=99,
    )
    client = await aiohttp_client(app)
    admin = await aiohttp_client(create_balancer_admin_app(app))
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def get() -> int:
        async with client.get("/echo") as resp:
            return resp.status

    assert await asyncio.gather(*(get() for _ in range(6))) == [200] * 6
    took = loop.time() - started
    assert took < 10.0, f"requests waited {took:.1f}s for the frozen instance"
    pool = app[POOL_KEY]
    assert [(e.upstream, e.reason) for e in pool.events] == [
        (f"gateway@{silent.address}", "unresponsive")
    ]
    async with admin.get("/ejections", headers={"X-Admin-Token": "testbed-admin"}) as resp:
        body = await resp.json()
    assert body["events"][0]["event"] == "ejected"
    assert body["events"][0]["address"] == silent.address
    assert [i["up"] for i in body["instances"]] == [False, True]
