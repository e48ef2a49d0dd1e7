"""A CDN PoP in front of a real origin app on a real socket, observed from outside."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from edge.cdn import CdnConfig, create_admin, create_app
from edge.front.fastlane import install_fast_lane
from edge.front.wire import WIRE_LANE_KEY, WireSite
from mesh.process import ProcessConfig
from observability.sampling import ParentBasedRateLimiting
from tests.edge.support_proxy import Upstream
from tests.support.processes import free_port

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application | TestServer], Awaitable[Client]]
TOKEN = "test-token"


@pytest.fixture
async def origin() -> AsyncIterator[Upstream]:
    up = await Upstream("origin").start()
    yield up
    await up.stop()


def _pop(origin_url: str, **overrides: object) -> web.Application:
    process = ProcessConfig(service="cdn-us", instance_id="pop-us", admin_token=TOKEN)
    values: dict[str, object] = {"origin_url": origin_url}
    values.update(overrides)
    config = CdnConfig(process=process, **values)  # type: ignore[arg-type]
    return create_app(config, registry=CollectorRegistry(), tracer_provider=TracerProvider())


async def _get(client: Client, path: str, **headers: str) -> tuple[int, str, str, str]:
    async with client.get(path, headers=headers) as resp:
        return resp.status, resp.headers.get("X-Cache", ""), resp.headers["Age"], await resp.text()


async def test_miss_then_hit_with_age(aiohttp_client: ClientFactory, origin: Upstream) -> None:
    client = await aiohttp_client(_pop(origin.url))
    status, xcache, age, body = await _get(client, "/cached/a?cc=max-age=60")
    assert (status, xcache, age) == (200, "MISS", "0")
    status, xcache, _, body2 = await _get(client, "/cached/a?cc=max-age=60")
    assert (status, xcache, body2) == (200, "HIT", body)
    assert origin.state.hits["a"] == 1
    async with client.head("/cached/a?cc=max-age=60") as resp:
        assert resp.headers["X-Cache"] == "HIT"
        assert resp.headers["Content-Length"] == str(len(body))
        assert await resp.read() == b""


@pytest.mark.parametrize("directives", ["no-store", "private, max-age=60"])
async def test_no_store_and_private_are_never_cached(
    aiohttp_client: ClientFactory, origin: Upstream, directives: str
) -> None:
    client = await aiohttp_client(_pop(origin.url))
    for _ in range(3):
        _, xcache, _, _ = await _get(client, f"/cached/p?cc={directives}")
        assert xcache == "MISS"
    assert origin.state.hits["p"] == 3


async def test_s_maxage_wins_for_the_shared_cache(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    client = await aiohttp_client(_pop(origin.url))
    path = "/cached/s?cc=max-age=0,%20s-maxage=60"
    await _get(client, path)
    _, xcache, _, _ = await _get(client, path)
    assert xcache == "HIT"
    assert origin.state.hits["s"] == 1


async def test_vary_keeps_variants_apart(aiohttp_client: ClientFactory, origin: Upstream) -> None:
    client = await aiohttp_client(_pop(origin.url))
    path = "/cached/v?cc=max-age=60&vary=Accept-Language"
    _, x1, _, en = await _get(client, path, **{"Accept-Language": "en"})
    _, x2, _, fr = await _get(client, path, **{"Accept-Language": "fr"})
    _, x3, _, en2 = await _get(client, path, **{"Accept-Language": "en"})
    assert (x1, x2, x3) == ("MISS", "MISS", "HIT")
    assert en.endswith("en")
    assert fr.endswith("fr")
    assert en2 == en
    assert origin.state.hits["v"] == 2


async def test_authorization_needs_public_to_be_shared(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    client = await aiohttp_client(_pop(origin.url))
    for _ in range(2):
        await _get(client, "/cached/auth?cc=max-age=60", Authorization="Bearer x")
    assert origin.state.hits["auth"] == 2
    for _ in range(2):
        await _get(client, "/cached/pub?cc=public,%20max-age=60", Authorization="Bearer x")
    assert origin.state.hits["pub"] == 1


async def test_revalidation_with_etag_and_last_modified(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    client = await aiohttp_client(_pop(origin.url))
    path = "/cached/r?cc=max-age=0&etag=1"
    _, x1, _, body1 = await _get(client, path)
    _, x2, _, body2 = await _get(client, path)
    assert (x1, x2) == ("MISS", "REVALIDATED")
    assert body1 == body2
    assert origin.state.conditional_log[-1][0] == '"r-v1"'  # If-None-Match was sent
    origin.state.version = 2  # the resource changes: the origin answers 200 with the new body
    _, x3, _, body3 = await _get(client, path)
    assert x3 == "MISS"
    assert "v2" in body3

    lm_path = "/cached/lm?cc=no-cache&lm=1"
    await _get(client, lm_path)
    _, x4, _, _ = await _get(client, lm_path)
    assert origin.state.conditional_log[-1][1] is not None  # If-Modified-Since was sent
    assert x4 == "MISS"  # this origin ignores If-Modified-Since and answers 200 again
    assert origin.state.hits["lm"] == 2


async def test_client_conditional_request_answered_from_cache(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    client = await aiohttp_client(_pop(origin.url))
    path = "/cached/c?cc=max-age=60&etag=1"
    await _get(client, path)
    async with client.get(path, headers={"If-None-Match": '"c-v1"'}) as resp:
        assert resp.status == 304
        assert resp.headers["X-Cache"] == "HIT"
    assert origin.state.hits["c"] == 1


async def test_stale_while_revalidate_refreshes_once_in_background(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    client = await aiohttp_client(_pop(origin.url))
    # max-age 2: the refreshed copy must still be fresh when checked, on a loaded machine too.
    path = "/cached/swr?cc=max-age=2,%20stale-while-revalidate=60"
    await _get(client, path)
    await asyncio.sleep(2.2)
    origin.state.version = 2
    origin.state.delay = 0.2
    results = await asyncio.gather(*(_get(client, path) for _ in range(5)))
    assert {r[1] for r in results} == {"STALE"}
    assert all("v1" in r[3] for r in results)  # served at once, from the stale copy
    for _ in range(100):
        if origin.state.hits["swr"] == 2:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    assert origin.state.hits["swr"] == 2  # one refresh, not five
    _, xcache, _, body = await _get(client, path)
    assert xcache == "HIT"
    assert "v2" in body


async def test_stale_if_error_serves_stale_while_origin_fails_or_is_down(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    client = await aiohttp_client(_pop(origin.url))
    sie = "/cached/e?cc=max-age=1,%20stale-if-error=60"
    plain = "/cached/f?cc=max-age=1"
    _, _, _, body = await _get(client, sie)
    await _get(client, plain)
    await asyncio.sleep(1.2)
    origin.state.status_override = 503
    status, xcache, _, stale_body = await _get(client, sie)
    assert (status, xcache, stale_body) == (200, "STALE", body)
    status, xcache, _, _ = await _get(client, plain)
    assert (status, xcache) == (503, "MISS")  # no stale-if-error: the error passes through
    await origin.stop()  # unreachable origin
    status, xcache, _, stale_body = await _get(client, sie)
    assert (status, xcache, stale_body) == (200, "STALE", body)
    async with client.get(plain) as resp:
        assert resp.status == 502
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["type"] == "urn:testbed:problem:unavailable"


async def test_concurrent_misses_collapse_into_one_origin_fetch(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    client = await aiohttp_client(_pop(origin.url))
    origin.state.delay = 0.3
    results = await asyncio.gather(*(_get(client, "/cached/hot?cc=max-age=60") for _ in range(20)))
    assert origin.state.hits["hot"] == 1
    assert Counter(r[1] for r in results) == {"MISS": 1, "HIT": 19}
    assert len({r[3] for r in results}) == 1
    # Uncacheable answers are not serialised: after the first, they are remembered as "pass".
    await _get(client, "/cached/nc?cc=no-store")
    origin.state.hits.clear()
    await asyncio.gather(*(_get(client, "/cached/nc?cc=no-store") for _ in range(5)))
    assert origin.state.hits["nc"] == 5


async def test_purge_api(aiohttp_client: ClientFactory, origin: Upstream) -> None:
    app = _pop(origin.url)
    client = await aiohttp_client(app)
    admin = await aiohttp_client(create_admin(app))
    for name in ("x", "y", "z"):
        await _get(client, f"/cached/{name}?cc=max-age=60")
    auth = {"X-Admin-Token": TOKEN}
    async with admin.post("/admin/purge", json={"all": True}) as resp:
        assert resp.status == 401
    for garbage in (
        b"not json",
        b"[]",
        b'{"all": false}',
        b'{"paths": []}',
        b'{"paths": ["x"]}',
        b'{"prefix": 3}',
        b'{"all": true, "prefix": "/"}',
        b'{"nuke": 1}',
    ):
        async with admin.post("/admin/purge", data=garbage, headers=auth) as resp:
            assert resp.status == 400, garbage
            assert (await resp.json())["message"]
    async with admin.post("/admin/purge", json={"paths": ["/cached/x"]}, headers=auth) as resp:
        assert resp.status == 200
        assert (await resp.json()) == {"purged": 1}
    assert (await _get(client, "/cached/x?cc=max-age=60"))[1] == "MISS"
    assert (await _get(client, "/cached/y?cc=max-age=60"))[1] == "HIT"
    async with admin.post("/admin/purge", json={"prefix": "/cached/"}, headers=auth) as resp:
        assert (await resp.json()) == {"purged": 3}
    assert (await _get(client, "/cached/y?cc=max-age=60"))[1] == "MISS"
    async with admin.post("/admin/purge", json={"all": True}, headers=auth) as resp:
        assert (await resp.json()) == {"purged": 1}  # only /cached/y was fetched again


async def test_cache_stays_within_its_byte_bound(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    client = await aiohttp_client(_pop(origin.url, cache_bytes=6_000, max_object_bytes=3_000))
    for name in ("l1", "l2", "l3", "l4"):
        await _get(client, f"/cached/{name}?cc=max-age=60&size=1500")
    assert (await _get(client, "/cached/l4?cc=max-age=60&size=1500"))[1] == "HIT"
    assert (await _get(client, "/cached/l1?cc=max-age=60&size=1500"))[1] == "MISS"  # evicted
    async with client.get("/metrics") as resp:
        metrics = await resp.text()
    held = next(line for line in metrics.splitlines() if line.startswith("cdn_cache_bytes "))
    assert 0 < float(held.split()[1]) <= 6_000


async def test_objects_over_the_limit_stream_through_uncached(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    client = await aiohttp_client(_pop(origin.url, max_object_bytes=10_000))
    for _ in range(2):
        status, xcache, _, body = await _get(client, "/cached/big?cc=max-age=60&size=200000")
        assert (status, xcache, len(body)) == (200, "MISS", 200_000 + len("big v1 "))
    assert origin.state.hits["big"] == 2


async def test_other_methods_pass_through_and_invalidate(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    client = await aiohttp_client(_pop(origin.url))
    await _get(client, "/echo")  # heuristically cacheable 200 without validators: not stored
    async with client.post("/echo", data=b"order") as resp:
        assert resp.status == 200
        assert resp.headers["X-Cache"] == "MISS"
        body = await resp.json()
        assert body["method"] == "POST"
        assert body["body_length"] == 5
        assert body["headers"]["X-Forwarded-For"] == "127.0.0.1"
        assert "pop-us" in body["headers"]["Via"]


async def test_unreachable_origin_without_cache_is_502(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(_pop(f"http://127.0.0.1:{free_port()}"))
    async with client.get("/anything") as resp:
        assert resp.status == 502
        assert resp.headers["X-Cache"] == "MISS"
        assert "trace_id" in await resp.json()


async def test_the_fast_lane_answers_fresh_hits_as_the_full_path_does(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    """With no credit for new traces, fresh hits skip routing and the span machinery
    (``edge.front.fastlane``); their answers must not differ from the full path's."""
    process = ProcessConfig(service="cdn-us", instance_id="pop-us", admin_token=TOKEN)
    registry = CollectorRegistry()
    provider = TracerProvider(sampler=ParentBasedRateLimiting(0))
    app = create_app(
        CdnConfig(process=process, origin_url=origin.url),
        registry=registry,
        tracer_provider=provider,
    )
    server = TestServer(app)
    await server.start_server()
    assert server.runner is not None
    assert server.runner.server is not None
    assert install_fast_lane(server.runner.server, app)
    client = await aiohttp_client(server)
    path = "/cached/f?cc=max-age=60&etag=1"
    assert (await _get(client, path))[1] == "MISS"

    async def answer(**headers: str) -> tuple[int, dict[str, str], bytes]:
        async with client.get(path, headers=headers) as resp:
            kept = {k.lower(): v for k, v in resp.headers.items() if k not in ("Age", "Date")}
            return resp.status, kept, await resp.read()

    traced = await answer(traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    fast = await answer()
    assert fast == traced
    assert fast[1]["x-cache"] == "HIT"
    etag = fast[1]["etag"]
    status, headers, body = await answer(**{"If-None-Match": etag})
    assert (status, headers["x-cache"], body) == (304, "HIT", b"")
    # A request with its own cache directives takes the full path.
    status, headers, _ = await answer(**{"Cache-Control": "no-cache"})
    assert (status, headers["x-cache"]) == (200, "REVALIDATED")
    assert origin.state.hits["f"] == 2
    hits = registry.get_sample_value("cdn_cache_requests_total", {"result": "hit"})
    assert hits == 3.0
    counted = registry.get_sample_value(
        "http_server_requests_total", {"method": "GET", "route": "/{tail}", "code": "200"}
    )
    assert counted == 4.0  # the miss, the traced hit, the fast hit, the revalidation
    provider.shutdown()


async def test_the_wire_lane_answers_fresh_hits_as_aiohttp_does(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    """On the wire lane (``edge.front.wire``) a fresh hit of a plain GET is answered below
    aiohttp's server: the same answer as aiohttp's path gives, counted and traced the same;
    what the lane does not answer (a miss, a conditional request) aiohttp serves. (Traces
    continued from trusted clients: tests/edge/test_trust.py.)"""
    path = "/cached/w?cc=max-age=60&etag=1"
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBasedRateLimiting(0))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    process = ProcessConfig(service="cdn-us", instance_id="pop-us", admin_token=TOKEN)
    registry = CollectorRegistry()
    app = create_app(
        CdnConfig(process=process, origin_url=origin.url),
        registry=registry,
        tracer_provider=provider,
    )
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    port = free_port()
    await WireSite(runner, "127.0.0.1", port, app[WIRE_LANE_KEY], 1.0).start()
    reference = await aiohttp_client(_pop(origin.url))  # aiohttp's path only
    # One connection per request, so each starts on the wire lane.
    connector = aiohttp.TCPConnector(force_close=True)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as s:

            async def answer(**headers: str) -> tuple[int, dict[str, str], bytes]:
                async with s.get(path, headers=headers) as resp:
                    return resp.status, _comparable(resp.headers), await resp.read()

            assert (await answer())[1]["x-cache"] == "MISS"  # aiohttp's path fetched it
            wire = await answer()
            traced = await answer(traceparent=traceparent)
            conditional = await answer(**{"If-None-Match": wire[1]["etag"]})
        for _ in range(2):
            async with reference.get(path) as resp:
                expected = (resp.status, _comparable(resp.headers), await resp.read())
        assert expected[1]["x-cache"] == "HIT"
        assert wire == expected
        assert traced == expected
        assert (conditional[0], conditional[1]["x-cache"], conditional[2]) == (304, "HIT", b"")
        assert runner.server is not None
        assert runner.server.requests_count == 2  # aiohttp served the miss and the 304 only
        hits = registry.get_sample_value("cdn_cache_requests_total", {"result": "hit"})
        assert hits == 3.0
        counted = registry.get_sample_value(
            "http_server_requests_total", {"method": "GET", "route": "/{tail}", "code": "200"}
        )
        assert counted == 3.0  # the miss and the two hits on the wire
        # The client's sampled traceparent does not force a trace at the PoP (it is not in
        # CDN_TRUSTED_NETWORKS): the budget (0 here) decides, as for any new trace.
        assert [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER] == []
    finally:
        await runner.cleanup()
        provider.shutdown()


def _comparable(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The fields two answers of the same stored response share (not its age or the time)."""
    skip = {"age", "date", "connection"}
    return {k.lower(): v for k, v in headers.items() if k.lower() not in skip}
