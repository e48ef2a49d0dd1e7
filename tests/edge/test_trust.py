"""Trust boundaries at the public entry: what a client says is believed only from our own hops.

A CDN PoP in front of a real origin app, a balancer in front of real upstreams, all on real
loopback sockets. The client is on 127.0.0.1; "trusted" means the PoP's
``CDN_TRUSTED_NETWORKS`` (the balancer's ``BALANCER_TRUSTED_PEERS``) holds it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from edge.cdn import CdnConfig, create_app
from edge.front.trust import TrustedNetworks
from edge.front.wire import WIRE_LANE_KEY, WireSite
from mesh.errors import ConfigError
from mesh.process import ProcessConfig
from observability.sampling import ParentBasedRateLimiting
from tests.edge.support_proxy import Upstream, proxy_client
from tests.support.processes import free_port

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application | TestServer], Awaitable[Client]]

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
SAMPLED = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
LOOPBACK = "127.0.0.1/32"


@pytest.fixture
async def origin() -> AsyncIterator[Upstream]:
    up = await Upstream("origin").start()
    yield up
    await up.stop()


def _pop(
    origin_url: str, *, trusted: str = "", budget: float = 10.0, hash_header: str | None = None
) -> tuple[web.Application, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBasedRateLimiting(budget))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = CdnConfig(
        process=ProcessConfig(service="cdn-us", instance_id="pop-us"),
        origin_url=origin_url,
        trusted_networks=TrustedNetworks.parse(trusted, "CDN_TRUSTED_NETWORKS"),
        hash_header=hash_header,
    )
    app = create_app(config, registry=CollectorRegistry(), tracer_provider=provider)
    return app, exporter


def _servers(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


HOSTILE = {
    "traceparent": SAMPLED,
    "tracestate": "planted=1",
    "X-Forwarded-For": "198.51.100.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "Forwarded": "for=198.51.100.7;proto=https",
    "X-User": "pin-me",
}


# ---- the networks ---------------------------------------------------------------------------


def test_trusted_networks_parse_and_match() -> None:
    nets = TrustedNetworks.parse(" 10.0.0.0/8, 127.0.0.1 ,::1/128,", "CDN_TRUSTED_NETWORKS")
    assert str(nets) == "10.0.0.0/8,127.0.0.1/32,::1/128"
    assert "10.2.3.4" in nets
    assert "127.0.0.1" in nets
    assert "::ffff:10.0.0.1" in nets  # an IPv4 client on a dual-stack socket
    assert "::1" in nets
    assert "127.0.0.2" not in nets
    assert "192.168.1.1" not in nets
    assert None not in nets
    assert "not-an-address" not in nets
    none = TrustedNetworks.parse("", "CDN_TRUSTED_NETWORKS")
    assert not none
    assert "127.0.0.1" not in none
    with pytest.raises(ConfigError, match=r"CDN_TRUSTED_NETWORKS: '10\.0\.0\.0/33'"):
        TrustedNetworks.parse("10.0.0.0/8,10.0.0.0/33", "CDN_TRUSTED_NETWORKS")


def test_trust_settings_are_read_once_from_the_environment() -> None:
    config = CdnConfig.from_env(
        {
            "CDN_ORIGIN_URL": "http://127.0.0.1:1",
            "CDN_TRUSTED_NETWORKS": "10.0.0.0/8",
            "CDN_HASH_HEADER": "X-User",
        }
    )
    assert "10.9.9.9" in config.trusted_networks
    assert config.hash_header == "X-User"
    default = CdnConfig.from_env({"CDN_ORIGIN_URL": "http://127.0.0.1:1"})
    assert not default.trusted_networks
    assert default.hash_header is None


# ---- the PoP, aiohttp's path ----------------------------------------------------------------


async def test_an_untrusted_client_starts_a_new_trace_and_its_forwarding_fields_are_overwritten(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    app, exporter = _pop(origin.url, hash_header="X-User")
    client = await aiohttp_client(app)
    async with client.get("/echo", headers=HOSTILE) as resp:
        assert resp.status == 200
        seen = {k.lower(): v for k, v in (await resp.json())["headers"].items()}
    (span,) = _servers(exporter)
    assert span.context is not None
    trace_id = f"{span.context.trace_id:032x}"
    assert trace_id != CLIENT_TRACE
    assert span.parent is None  # a new trace, not a child of the client's span
    (link,) = span.links
    assert f"{link.context.trace_id:032x}" == CLIENT_TRACE
    assert f"{link.context.span_id:016x}" == CLIENT_SPAN
    # The origin sees the PoP's trace, and nothing the client claimed about earlier hops.
    assert seen["traceparent"].split("-")[1] == trace_id
    assert "tracestate" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == client.server.make_url("/").authority
    assert "forwarded" not in seen
    assert seen["x-user"] == "127.0.0.1"  # the hash header is the PoP's, not the client's


async def test_a_clients_sampled_flag_does_not_spend_the_pops_budget(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    app, exporter = _pop(origin.url, budget=2)
    client = await aiohttp_client(app)
    for _ in range(6):
        async with client.get("/echo", headers={"traceparent": SAMPLED}) as resp:
            assert resp.status == 200
            await resp.read()
    # A burst of one second's worth (2) is recorded, however many sampled parents came.
    assert len(_servers(exporter)) == 2


async def test_a_trusted_client_continues_its_trace_and_its_forwarding_fields_are_extended(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    app, exporter = _pop(origin.url, trusted=LOOPBACK, hash_header="X-User")
    client = await aiohttp_client(app)
    async with client.get("/echo", headers=HOSTILE) as resp:
        seen = {k.lower(): v for k, v in (await resp.json())["headers"].items()}
    (span,) = _servers(exporter)
    assert span.context is not None
    assert f"{span.context.trace_id:032x}" == CLIENT_TRACE
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == CLIENT_SPAN
    assert not span.links
    assert seen["traceparent"].split("-")[1] == CLIENT_TRACE
    assert seen["x-forwarded-for"] == "198.51.100.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "evil.example"
    assert seen["x-user"] == "pin-me"


# ---- the PoP, the wire lane -----------------------------------------------------------------


@pytest.mark.parametrize("trusted", [False, True])
async def test_the_wire_lane_draws_the_same_boundary(origin: Upstream, trusted: bool) -> None:
    app, exporter = _pop(origin.url, trusted=LOOPBACK if trusted else "")
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    port = free_port()
    await WireSite(runner, "127.0.0.1", port, app[WIRE_LANE_KEY], 1.0).start()
    path = "/cached/t?cc=max-age=60"
    connector = aiohttp.TCPConnector(force_close=True)  # each request starts on the lane
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as s:
            async with s.get(path) as resp:
                assert resp.headers["X-Cache"] == "MISS"  # aiohttp's path fetched it
            exporter.clear()
            async with s.get(path, headers={"traceparent": SAMPLED}) as resp:
                assert resp.headers["X-Cache"] == "HIT"
        assert runner.server is not None
        assert runner.server.requests_count == 1  # the hit was the wire lane's
        (span,) = _servers(exporter)
        assert span.context is not None
        continued = f"{span.context.trace_id:032x}" == CLIENT_TRACE
        assert continued == trusted
        links: list[Any] = list(span.links)
        if trusted:
            assert not links
        else:
            assert [f"{link.context.trace_id:032x}" for link in links] == [CLIENT_TRACE]
    finally:
        await runner.cleanup()


# ---- the balancer ---------------------------------------------------------------------------


async def _homes(client: Client, users: list[str]) -> tuple[set[str], list[dict[str, str]]]:
    homes, seen = set(), []
    for user in users:
        async with client.get("/echo", headers={"X-User": user}) as resp:
            body = await resp.json()
            homes.add(body["name"])
            seen.append({k.lower(): v for k, v in body["headers"].items()})
    return homes, seen


async def test_the_balancer_believes_its_hash_header_from_trusted_peers_only() -> None:
    ups = [await Upstream(f"up{i}").start() for i in range(3)]
    users = [f"user-{i}" for i in range(12)]
    try:
        addresses = [u.address for u in ups]
        hashing: dict[str, object] = {"policy": "consistent_hash", "hash_header": "X-User"}
        async with proxy_client(addresses, **hashing) as (client, _):
            homes, seen = await _homes(client, users)
        # Not one of our hops: the header is neither the key nor forwarded.
        assert len(homes) == 1
        assert all("x-user" not in each for each in seen)
        trusted = TrustedNetworks.parse(LOOPBACK, "BALANCER_TRUSTED_PEERS")
        async with proxy_client(addresses, **hashing, trusted_peers=trusted) as (client, _):
            homes, seen = await _homes(client, users)
        assert len(homes) > 1
        assert [each["x-user"] for each in seen] == users
    finally:
        for up in ups:
            await up.stop()
