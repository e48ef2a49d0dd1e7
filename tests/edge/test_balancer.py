"""The load balancer against real upstream apps on real sockets (no mocks)."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from edge.balancer import BalancerConfig, create_app
from edge.balancer.app import POOL_KEY
from edge.balancer.headers import upstream_request_headers
from edge.front.trust import TrustedNetworks
from mesh.discovery import StaticDiscovery
from mesh.process import ProcessConfig
from tests.edge.support_proxy import CHUNK, Upstream
from tests.support.processes import free_port

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


def _config(**overrides: object) -> BalancerConfig:
    process = ProcessConfig(service="balancer", instance_id="lb-test")
    values: dict[str, object] = {"health_interval": 0.05, "health_timeout": 0.5}
    values.update(overrides)
    return BalancerConfig(process=process, **values)  # type: ignore[arg-type]


@pytest.fixture
async def upstreams() -> AsyncIterator[list[Upstream]]:
    ups = [await Upstream(f"up{i}").start() for i in range(3)]
    yield ups
    for up in ups:
        await up.stop()


def _balancer(addresses: list[str], **overrides: object) -> tuple[web.Application, StaticDiscovery]:
    discovery = StaticDiscovery({"gateway": addresses})
    app = create_app(
        _config(**overrides),
        discovery=discovery,
        registry=CollectorRegistry(),
        tracer_provider=TracerProvider(),
    )
    return app, discovery


async def test_spreads_requests_evenly(
    aiohttp_client: ClientFactory, upstreams: list[Upstream]
) -> None:
    app, _ = _balancer([u.address for u in upstreams])
    client = await aiohttp_client(app)
    seen: Counter[str] = Counter()
    for _ in range(30):
        async with client.get("/echo") as resp:
            assert resp.status == 200
            seen[(await resp.json())["name"]] += 1
    assert seen == {"up0": 10, "up1": 10, "up2": 10}


async def test_least_request_and_consistent_hash_policies(
    aiohttp_client: ClientFactory, upstreams: list[Upstream]
) -> None:
    app, _ = _balancer(
        [u.address for u in upstreams],
        policy="consistent_hash",
        hash_header="X-User",
        trusted_peers=TrustedNetworks.parse("127.0.0.1/32", "BALANCER_TRUSTED_PEERS"),
    )
    client = await aiohttp_client(app)
    homes = set()
    for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
        names = set()
        for _ in range(5):
            async with client.get("/echo", headers={"X-User": user}) as resp:
                names.add((await resp.json())["name"])
        assert len(names) == 1, f"{user} moved between instances: {names}"
        homes |= names
    assert len(homes) > 1  # the header, not the (one) client address, is the key

    app2, _ = _balancer([u.address for u in upstreams], policy="least_request")
    client2 = await aiohttp_client(app2)
    results = await asyncio.gather(*(client2.get("/echo") for _ in range(30)))
    names2 = Counter([(await r.json())["name"] for r in results])
    assert len(names2) == 3


async def test_proxy_headers(aiohttp_client: ClientFactory, upstreams: list[Upstream]) -> None:
    app, _ = _balancer([upstreams[0].address])
    client = await aiohttp_client(app)
    async with client.get(
        "/echo?q=1",
        headers={
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-Forwarded-For": "203.0.113.9",
            "X-End-To-End": "kept",
            "Host": "shop.example",
        },
    ) as resp:
        assert resp.status == 200
        seen = (await resp.json())["headers"]
        # Hop-by-hop fields of the answer are not passed back either.
        assert "X-Hop" not in resp.headers
        assert "Keep-Alive" not in resp.headers
        assert resp.headers["X-Upstream"] == "up0"
        assert "lb-test" in resp.headers["Via"]
    lower = {k.lower(): v for k, v in seen.items()}
    for hop in ("x-drop-me", "keep-alive", "te", "proxy-authorization"):
        assert hop not in lower, hop
    assert lower.get("connection", "keep-alive") == "keep-alive"  # the balancer's own hop
    assert lower["x-end-to-end"] == "kept"
    assert lower["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert lower["x-forwarded-proto"] == "http"
    assert lower["x-forwarded-host"] == "shop.example"
    assert lower["via"] == "1.1 lb-test"
    assert "traceparent" in lower


def test_upstream_headers_keep_prior_forwarding_fields() -> None:
    from aiohttp.test_utils import make_mocked_request

    request = make_mocked_request(
        "GET",
        "/x",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "cdn.example", "Via": "1.1 pop"},
    )
    out = upstream_request_headers(request, via="lb")
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "cdn.example"
    assert out["Via"] == "1.1 pop, 1.1 lb"


async def test_streams_large_response_without_buffering(
    aiohttp_client: ClientFactory, upstreams: list[Upstream]
) -> None:
    up = upstreams[0]
    app, _ = _balancer([up.address])
    client = await aiohttp_client(app)
    async with client.get("/stream?chunks=64") as resp:
        assert resp.status == 200
        # The first chunk arrives while the upstream is still holding back the rest, so the
        # balancer cannot have buffered the whole 4 MiB answer.
        first = await asyncio.wait_for(resp.content.readexactly(CHUNK), 5)
        assert first == b"a" * CHUNK
        assert not up.state.release.is_set()
        up.state.release.set()
        rest = await resp.read()
    assert len(first) + len(rest) == 64 * CHUNK


async def test_streams_large_request_body(
    aiohttp_client: ClientFactory, upstreams: list[Upstream]
) -> None:
    up = upstreams[0]
    app, _ = _balancer([up.address])
    client = await aiohttp_client(app)

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * CHUNK
        # Only continue once the upstream has begun reading: proves the body is streamed.
        await asyncio.wait_for(up.state.upload_started.wait(), 5)
        for _ in range(31):
            yield b"y" * CHUNK

    async with client.post("/upload", data=body()) as resp:
        assert resp.status == 200
        assert (await resp.json())["received"] == 32 * CHUNK


async def test_connect_failure_is_502_problem_json(aiohttp_client: ClientFactory) -> None:
    # A port bound but not listening refuses connections, and no server (the test's own
    # included: a free port may be handed out again) can take it while it is held.
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        app, _ = _balancer([f"127.0.0.1:{reserved.getsockname()[1]}"])
        client = await aiohttp_client(app)
        await _connect_refused_answer(client)


async def _connect_refused_answer(client: TestClient[web.Request, web.Application]) -> None:
    async with client.get("/echo") as resp:
        assert resp.status == 502
        assert resp.content_type == "application/problem+json"
        body = await resp.json()
        assert body["type"] == "urn:testbed:problem:unavailable"
        assert "trace_id" in body
        assert body["trace_id"]


async def test_upstream_timeout_is_504(
    aiohttp_client: ClientFactory, upstreams: list[Upstream]
) -> None:
    app, _ = _balancer([upstreams[0].address], read_timeout=0.2)
    client = await aiohttp_client(app)
    async with client.get("/slow?s=2") as resp:
        assert resp.status == 504
        assert (await resp.json())["type"] == "urn:testbed:problem:deadline-exceeded"


async def test_connect_failures_retried_on_another_instance(
    aiohttp_client: ClientFactory, upstreams: list[Upstream]
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    app, _ = _balancer([dead, upstreams[0].address], health_interval=30)
    client = await aiohttp_client(app)
    for method in ("GET", "POST", "GET", "POST"):
        async with client.request(method, "/echo", data=b"payload") as resp:
            assert resp.status == 200, method  # a refused connection is safe to retry
    pool = app[POOL_KEY]
    assert not pool.is_up(pool.discovery.instances("gateway")[0])
    metrics = await (await client.get("/metrics")).text()
    assert f'balancer_upstream_healthy{{upstream="gateway@{dead}"}} 0.0' in metrics
    assert "balancer_upstream_ejections_total" in metrics


async def test_failing_readiness_takes_instance_out_and_back(
    aiohttp_client: ClientFactory, upstreams: list[Upstream]
) -> None:
    app, _ = _balancer([u.address for u in upstreams[:2]])
    client = await aiohttp_client(app)
    upstreams[0].state.ready = False
    pool = app[POOL_KEY]
    first = pool.discovery.instances("gateway")[0]
    for _ in range(100):
        if not pool.is_up(first):
            break
        await asyncio.sleep(0.02)
    assert not pool.is_up(first)
    names = {(await (await client.get("/echo")).json())["name"] for _ in range(6)}
    assert names == {"up1"}
    upstreams[0].state.ready = True
    for _ in range(100):
        if pool.is_up(first):
            break
        await asyncio.sleep(0.02)
    names = {(await (await client.get("/echo")).json())["name"] for _ in range(6)}
    assert names == {"up0", "up1"}


async def test_leaving_instance_drains(
    aiohttp_client: ClientFactory, upstreams: list[Upstream]
) -> None:
    a, b = upstreams[0], upstreams[1]
    app, discovery = _balancer([a.address, b.address])
    client = await aiohttp_client(app)
    # Round robin starts with `a`: this slow request is in flight on it.
    slow = asyncio.ensure_future(client.get("/slow?s=0.5"))
    await asyncio.sleep(0.1)
    assert a.state.hits["/slow"] == 1
    discovery.update("gateway", [b.address])
    names = {(await (await client.get("/echo")).json())["name"] for _ in range(5)}
    assert names == {"up1"}
    resp = await slow
    assert resp.status == 200
    assert (await resp.json())["name"] == "up0"


async def test_client_disconnect_cancels_upstream(
    aiohttp_client: ClientFactory, upstreams: list[Upstream]
) -> None:
    up = upstreams[0]
    app, _ = _balancer([up.address])
    client = await aiohttp_client(app)
    with pytest.raises(asyncio.TimeoutError):
        await client.get("/slow?s=10", timeout=aiohttp.ClientTimeout(total=0.3))
    await asyncio.wait_for(up.state.cancelled.wait(), 5)
