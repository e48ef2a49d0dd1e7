"""The gateway in front of the five real services, all as processes.

Aggregation with and without recommendations (slow, then dead), checkout idempotency through
the gateway (same key twice: one order, one charge), order status per API key, and the product
list's caching headers.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest

from tests.edge.support_gateway import DEMO_KEY, Stack, start_stack
from tests.support.processes import Spawner

pytestmark = [pytest.mark.slow()]

KEY = {"X-API-Key": DEMO_KEY}
OTHER_KEY = {"X-API-Key": "other-key"}
GATEWAY_ENV = {
    "GATEWAY_API_KEYS": f"{DEMO_KEY}:500:500,other-key:500:500",
    # generous on a loaded machine; the slow case below is far beyond it
    "GATEWAY_RECOMMENDATIONS_BUDGET_MS": "3000",
    "GATEWAY_UPSTREAM_TIMEOUT_MS": "8000",
}
ADMIN = {"X-Admin-Token": "testbed-admin"}


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))


async def _json(resp: aiohttp.ClientResponse, status: int = 200) -> Any:
    text = await resp.text()
    assert resp.status == status, text
    return await resp.json(content_type=None)


async def _first_product(http: aiohttp.ClientSession, stack: Stack) -> str:
    async with http.get(stack.gateway.url + "/api/products", headers=KEY) as resp:
        listing = await _json(resp)
    assert listing["items"], listing
    return str(listing["items"][0]["id"])


async def _metric(http: aiohttp.ClientSession, url: str, line_prefix: str) -> float:
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(line_prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_product_detail_with_and_without_recommendations(spawner: Spawner) -> None:
    stack = await start_stack(spawner, gateway_env=GATEWAY_ENV)
    gw = stack.gateway.url
    recs = stack.services["recommendations"]
    degraded = 'gateway_upstream_degraded_total{upstream="recommendations"}'
    async with _session() as http:
        product_id = await _first_product(http, stack)

        async with http.get(f"{gw}/api/products/{product_id}", headers=KEY) as resp:
            detail = await _json(resp)
        assert detail["product"]["id"] == product_id
        assert detail["product"]["image_url"] == f"/images/v1/products/{product_id}.svg"
        assert detail["availability"]["available"] >= 0
        assert isinstance(detail["recommendations"], list)
        assert detail["recommendations"], "the seeded catalog has related products"
        assert product_id not in {r["product_id"] for r in detail["recommendations"]}
        assert detail["degraded"] == []
        assert await _metric(http, gw, degraded) == 0

        # Slow: every Recommend takes 6 s, far past the 3 s budget.
        async with http.put(
            recs.admin_url + "/faults/latency",
            json={"fixed_ms": 6000, "rate": 1.0},
            headers=ADMIN,
        ) as resp:
            assert resp.status in (200, 201, 204), await resp.text()
        async with http.get(f"{gw}/api/products/{product_id}", headers=KEY) as resp:
            detail = await _json(resp)
        assert detail["recommendations"] is None
        assert detail["degraded"] == ["recommendations"]
        assert detail["product"]["id"] == product_id
        assert detail["availability"] is not None
        async with http.delete(recs.admin_url + "/faults", headers=ADMIN) as resp:
            assert resp.status in (200, 204)

        # Dead: the process is gone.
        recs.kill()
        async with http.get(f"{gw}/api/products/{product_id}", headers=KEY) as resp:
            detail = await _json(resp)
        assert detail["recommendations"] is None
        assert detail["degraded"] == ["recommendations"]
        assert await _metric(http, gw, degraded) >= 2

        # The admin API (faults) is on the admin listener, behind its token, and nowhere else.
        async with http.get(gw + "/faults", headers={**KEY, **ADMIN}) as resp:
            assert resp.status == 404
        async with http.get(stack.gateway.admin_url + "/faults") as resp:
            assert resp.status == 401
        async with http.get(stack.gateway.admin_url + "/faults", headers=ADMIN) as resp:
            assert resp.status == 200

        # The catalog is not optional: unknown product is 404, as problem+json.
        async with http.get(f"{gw}/api/products/no-such-product", headers=KEY) as resp:
            problem = await _json(resp, 404)
        assert resp.content_type == "application/problem+json"
        assert len(problem["trace_id"]) == 32


async def _payments_audit(http: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    url = stack.services["payments"].url + "/testbed.payments.v1.PaymentService/Audit"
    async with http.post(url, json={}) as resp:
        audit: dict[str, Any] = await _json(resp)
    return audit


async def test_checkout_is_idempotent_through_the_gateway(spawner: Spawner) -> None:
    stack = await start_stack(spawner, gateway_env=GATEWAY_ENV)
    gw = stack.gateway.url
    async with _session() as http:
        product_id = await _first_product(http, stack)
        order = {"items": [{"product_id": product_id, "quantity": 1}]}
        key = "k" * 92 + str(uuid.uuid4())  # the longest key the API accepts
        assert len(key) == 128
        headers = {**KEY, "Idempotency-Key": key}

        async with http.post(f"{gw}/api/checkout", json=order, headers=headers) as resp:
            first = await _json(resp)
        async with http.post(f"{gw}/api/checkout", json=order, headers=headers) as resp:
            second = await _json(resp)
        assert second["id"] == first["id"]
        assert first["status"] in ("pending", "confirmed")
        assert first["items"][0]["product_id"] == product_id
        assert first["total_cents"] == first["items"][0]["unit_price_cents"]

        audit = await _payments_audit(http, stack)
        charges = [c for c in audit["charges"] if c["order_id"] == first["id"]]
        assert len(charges) == 1, charges
        assert charges[0]["amount_cents"] == first["total_cents"]

        # Another key is another order; the same key for a different order is a conflict.
        other = {**KEY, "Idempotency-Key": str(uuid.uuid4())}
        async with http.post(f"{gw}/api/checkout", json=order, headers=other) as resp:
            third = await _json(resp)
        assert third["id"] != first["id"]
        changed = {"items": [{"product_id": product_id, "quantity": 2}]}
        async with http.post(f"{gw}/api/checkout", json=changed, headers=headers) as resp:
            # The IETF idempotency-key draft: a key reused with another payload is 422.
            assert resp.status == 422, await resp.text()
            assert resp.content_type == "application/problem+json"
            problem = await resp.json(content_type=None)
            assert problem["type"] == "urn:testbed:problem:idempotency-key-reused"
            assert "already used" in problem["detail"]
            assert problem["trace_id"]
        audit = await _payments_audit(http, stack)
        assert len([c for c in audit["charges"] if c["order_id"] == first["id"]]) == 1
        assert len({c["order_id"] for c in audit["charges"]} & {first["id"], third["id"]}) == 2

        # The order's status, for its own API key only.
        async with http.get(f"{gw}/api/orders/{first['id']}", headers=KEY) as resp:
            status = await _json(resp)
        assert status["id"] == first["id"]
        assert status["status"] in ("pending", "confirmed")
        async with http.get(f"{gw}/api/orders/{first['id']}", headers=OTHER_KEY) as resp:
            await _json(resp, 404)
        async with http.get(f"{gw}/api/orders/no-such-order", headers=KEY) as resp:
            await _json(resp, 404)


async def test_product_list_is_cacheable_and_revalidates(spawner: Spawner) -> None:
    stack = await start_stack(spawner, gateway_env=GATEWAY_ENV)
    gw = stack.gateway.url
    async with _session() as http:
        async with http.get(gw + "/api/products?page_size=2", headers=KEY) as resp:
            page = await _json(resp)
            etag = resp.headers["ETag"]
            assert "public" in resp.headers["Cache-Control"]
            assert resp.headers["Vary"] == "X-API-Key"
        assert len(page["items"]) == 2
        assert page["next_page_token"]
        async with http.get(
            gw + "/api/products?page_size=2", headers={**KEY, "If-None-Match": etag}
        ) as resp:
            assert resp.status == 304
            assert resp.headers["ETag"] == etag
        async with http.get(
            gw + f"/api/products?page_size=2&page_token={page['next_page_token']}", headers=KEY
        ) as resp:
            following = await _json(resp)
        assert {p["id"] for p in following["items"]}.isdisjoint({p["id"] for p in page["items"]})
        async with http.get(gw + "/api/products?page_size=0", headers=KEY) as resp:
            problem = await _json(resp, 400)
        assert "page_size" in problem["detail"]
