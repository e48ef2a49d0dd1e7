"""A PoP as a real process (``python -m edge.cdn``) in front of a real origin process."""

from __future__ import annotations

import aiohttp
import pytest

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
