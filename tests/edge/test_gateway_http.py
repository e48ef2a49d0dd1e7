"""The gateway's HTTP surface without services: auth, rate limits, input checks, error shape,
the storefront's files and cache headers. (Calls that need a service answer 503 here.)"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from edge.gateway.images import product_svg
from edge.gateway.problems import problem_middleware
from tests.edge.support_gateway import DEMO_KEY, gateway_app


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> TestClient[web.Request, web.Application]:
    app = gateway_app(
        tmp_path,
        GATEWAY_API_KEYS=f"{DEMO_KEY}:1000:1000,tiny:0.5:2",
        GATEWAY_MAX_BODY_BYTES="1024",
    )
    return await aiohttp_client(app)


KEY = {"X-API-Key": DEMO_KEY}
ORDER = {"items": [{"product_id": "p-001", "quantity": 1}]}


def checkout_headers(**extra: str) -> dict[str, str]:
    return {**KEY, "Idempotency-Key": "key-0123456789", **extra}


async def problem(resp: ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body = await resp.json(content_type=None)
    assert isinstance(body, dict)
    assert body["status"] == status
    assert str(body["type"]).startswith("urn:testbed:problem:")
    assert re.fullmatch(r"[0-9a-f]{32}", str(body["trace_id"])), body
    assert "Traceback" not in json.dumps(body)
    return body


async def test_api_needs_a_known_key(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.get("/api/products")
    body = await problem(resp, 401)
    assert "X-API-Key" in str(body["detail"])
    assert resp.headers["WWW-Authenticate"].startswith("ApiKey")
    await problem(await client.get("/api/products", headers={"X-API-Key": "nope"}), 401)
    await problem(await client.post("/api/checkout", json=ORDER), 401)
    await problem(await client.get("/api/orders/o-1", headers={"X-API-Key": ""}), 401)


async def test_over_the_rate_is_429_with_retry_after(
    client: TestClient[web.Request, web.Application],
) -> None:
    headers = {"X-API-Key": "tiny"}
    # the burst of 2 goes through auth (then fails on the missing catalog, which is fine)
    for _ in range(2):
        resp = await client.get("/api/products", headers=headers)
        assert resp.status != 429
    resp = await client.get("/api/products", headers=headers)
    await problem(resp, 429)
    assert int(resp.headers["Retry-After"]) >= 1
    # another key has its own bucket
    assert (await client.get("/api/products", headers=KEY)).status != 429
    metrics = await (await client.get("/metrics")).text()
    assert "gateway_ratelimited_total 1.0" in metrics


async def test_body_too_large_is_413(client: TestClient[web.Request, web.Application]) -> None:
    big = {"items": [{"product_id": "p-001", "quantity": 1}], "pad": "x" * 4096}
    await problem(await client.post("/api/checkout", json=big, headers=checkout_headers()), 413)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 512

    resp = await client.post(
        "/api/checkout",
        data=chunks(),
        headers=checkout_headers(**{"Content-Type": "application/json"}),
    )
    await problem(resp, 413)


async def test_malformed_and_invalid_json_are_400_naming_the_field(
    client: TestClient[web.Request, web.Application],
) -> None:
    headers = checkout_headers(**{"Content-Type": "application/json"})
    body = await problem(await client.post("/api/checkout", data=b"{nope", headers=headers), 400)
    assert "not valid JSON" in str(body["detail"])
    bad = {"items": [{"product_id": "p-001", "quantity": 500}]}
    body = await problem(
        await client.post("/api/checkout", json=bad, headers=checkout_headers()), 400
    )
    assert "items.0.quantity" in str(body["detail"])
    assert body["errors"] == [
        {"field": "items.0.quantity", "message": "Input should be less than or equal to 100"}
    ]
    body = await problem(
        await client.post("/api/checkout", json={"items": [], "x": 1}, headers=checkout_headers()),
        400,
    )
    assert {e["field"] for e in body["errors"]} == {"items", "x"}


async def test_a_product_on_two_lines_is_well_formed_but_unprocessable_422(
    client: TestClient[web.Request, web.Application],
) -> None:
    line = {"product_id": "p-001", "quantity": 1}
    body = await problem(
        await client.post(
            "/api/checkout", json={"items": [line, line]}, headers=checkout_headers()
        ),
        422,
    )
    assert body["type"] == "urn:testbed:problem:repeated-product"
    assert "p-001" in str(body["detail"])
    resp = await client.post(
        "/api/checkout", data=b"items=1", headers=checkout_headers(**{"Content-Type": "text/plain"})
    )
    await problem(resp, 415)


async def test_checkout_needs_an_idempotency_key(
    client: TestClient[web.Request, web.Application],
) -> None:
    body = await problem(await client.post("/api/checkout", json=ORDER, headers=KEY), 400)
    assert "Idempotency-Key" in str(body["detail"])
    resp = await client.post(
        "/api/checkout", json=ORDER, headers={**KEY, "Idempotency-Key": "bad key!"}
    )
    await problem(resp, 400)


async def test_bad_path_ids_and_unknown_routes_are_problems(
    client: TestClient[web.Request, web.Application],
) -> None:
    body = await problem(await client.get("/api/products/%20bad", headers=KEY), 400)
    assert "'id'" in str(body["detail"])
    await problem(await client.get("/api/nothing-here", headers=KEY), 404)
    await problem(await client.get("/nothing-here"), 404)
    resp = await client.delete("/api/checkout", headers=KEY)
    await problem(resp, 405)
    assert "POST" in resp.headers["Allow"]


async def test_missing_service_is_503_not_a_crash(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/api/products", headers=KEY)
    body = await problem(resp, 503)
    assert body["detail"] == "the catalog service is unavailable; retry shortly"
    assert resp.headers["Retry-After"] == "1"
    resp = await client.post("/api/checkout", json=ORDER, headers=checkout_headers())
    await problem(resp, 503)


async def test_admin_routes_are_not_public(
    client: TestClient[web.Request, web.Application],
) -> None:
    for path in ("/faults", "/admin/faults", "/api/faults"):
        resp = await client.get(path, headers={**KEY, "X-Admin-Token": "testbed-admin"})
        assert resp.status == 404, path


async def test_openapi_document_is_public_and_cacheable(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"] == "3.1.0"
    assert "/api/checkout" in doc["paths"]
    assert resp.headers["Cache-Control"].startswith("public")
    again = await client.get("/openapi.json", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304


async def test_storefront_is_served_with_cache_headers(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.headers["Cache-Control"] == "public, max-age=60"
    page = await resp.text()
    assert f'<meta name="api-key" content="{DEMO_KEY}">' in page
    assets = re.findall(r'(?:href|src)="(/static/app\.[0-9a-f]{12}\.(?:css|js))"', page)
    assert len(assets) == 2, page
    for url in assets:
        asset = await client.get(url)
        assert asset.status == 200
        assert asset.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        cached = await client.get(url, headers={"If-None-Match": asset.headers["ETag"]})
        assert cached.status == 304
    assert (await client.get("/static/app.css")).status == 404  # only fingerprinted names


async def test_product_images_are_generated_and_immutable(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/images/v1/products/p-001.svg")
    assert resp.status == 200
    assert resp.content_type == "image/svg+xml"
    assert await resp.read() == product_svg("p-001")
    assert "immutable" in resp.headers["Cache-Control"]
    assert (await client.get("/images/v1/products/%3Cscript%3E.svg")).status == 400


async def test_unexpected_errors_leak_nothing(aiohttp_client: AiohttpClient) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret internal detail /etc/passwd")

    app = web.Application(middlewares=[problem_middleware])
    app.router.add_get("/broken", broken)
    client = await aiohttp_client(app)
    resp = await client.get("/broken")
    assert resp.status == 500
    assert resp.content_type == "application/problem+json"
    text = await resp.text()
    assert "secret" not in text
    assert "RuntimeError" not in text
    assert "Traceback" not in text
    assert json.loads(text)["detail"] == "the gateway failed to handle this request"
