"""A PoP as a real process (``python -m edge.cdn``) in front of a real origin process."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from observability.spans import SpanKind, load_spans
from tests.support.processes import Spawner

pytestmark = pytest.mark.slow


async def test_pop_process_caches_purges_and_serves_stale_when_origin_dies(
    spawner: Spawner,
) -> None:
    origin = spawner.start("tests.edge.support_proxy", name="origin")
    await origin.wait_ready()
    pop = spawner.start(
        "edge.cdn",
        name="pop-eu",
        env={
            "TESTBED_REGION": "eu",
            "CDN_ORIGIN_URL": origin.url,
            "CDN_CACHE_BYTES": "1000000",
            "TESTBED_ADMIN_TOKEN": "s3cret",
        },
    )
    await pop.wait_ready()
    path = "/cached/page?cc=max-age=0,%20stale-if-error=60&etag=1"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        seen = []
        for _ in range(2):
            async with session.get(pop.url + path) as resp:
                assert resp.status == 200
                seen.append(resp.headers["X-Cache"])
        assert seen == ["MISS", "REVALIDATED"]
        origin.kill()
        async with session.get(pop.url + path) as resp:
            assert resp.status == 200
            assert resp.headers["X-Cache"] == "STALE"
        async with session.post(pop.admin_url + "/admin/purge", json={"all": True}) as resp:
            assert resp.status == 401
        async with session.post(
            pop.admin_url + "/admin/purge", json={"all": True}, headers={"X-Admin-Token": "s3cret"}
        ) as resp:
            assert resp.status == 200
            assert await resp.json() == {"purged": 1}
        async with session.get(pop.url + path) as resp:
            assert resp.status == 502  # nothing left to serve, origin gone
        async with session.get(pop.url + "/metrics") as resp:
            text = await resp.text()
        assert 'cdn_cache_requests_total{result="stale"} 1.0' in text
        assert 'cdn_cache_requests_total{result="revalidated"} 1.0' in text
        # The purge route lives on the admin port only.
        async with session.post(pop.url + "/admin/purge", json={"all": True}) as resp:
            assert resp.status == 502  # proxied to the (dead) origin, never handled locally


async def test_pop_process_answers_untraced_hits_in_its_fast_lane(
    spawner: Spawner, tmp_path: Path
) -> None:
    """With no credit for new traces (OTEL_TRACES_SAMPLER_ARG=0) the process serves fresh hits
    from its fast lane: counted, not traced; a request of a sampled trace from a trusted
    network (CDN_TRUSTED_NETWORKS) is traced (from anyone else it would start a new trace,
    under the budget: tests/edge/test_trust.py)."""
    origin = spawner.start("tests.edge.support_proxy", name="origin")
    await origin.wait_ready()
    pop = spawner.start(
        "edge.cdn",
        name="pop-fast",
        env={
            "TESTBED_REGION": "us",
            "CDN_ORIGIN_URL": origin.url,
            "TESTBED_RUN_DIR": str(tmp_path),
            "OTEL_TRACES_SAMPLER_ARG": "0",
            "CDN_TRUSTED_NETWORKS": "127.0.0.1/32",
        },
    )
    await pop.wait_ready()
    path = "/cached/fast?cc=max-age=60"
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        seen = []
        for headers in ({}, {}, {}, {"traceparent": traceparent}):
            async with session.get(pop.url + path, headers=headers) as resp:
                assert resp.status == 200
                seen.append(resp.headers["X-Cache"])
        assert seen == ["MISS", "HIT", "HIT", "HIT"]
        async with session.get(pop.url + "/metrics") as resp:
            text = await resp.text()
    assert 'cdn_cache_requests_total{result="hit"} 3.0' in text
    assert 'http_server_requests_total{code="200",method="GET",route="/{tail}"} 4.0' in text
    pop.stop(timeout=5)  # flushes its span file
    assert '"event":"fast_lane_on"' in pop.log_path.read_text()
    spans = load_spans(tmp_path)
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert [s.trace_id for s in servers] == ["0af7651916cd43dd8448eb211c80319c"]
