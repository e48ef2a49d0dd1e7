"""A small real shop (aiohttp, real socket) that answers like the gateway's public API."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.processes import free_port

FAIL_CHECKOUT = web.AppKey("fail_checkout", bool)


def make_shop(*, fail_checkout: bool = False) -> web.Application:
    ids = itertools.count(1)
    products = [{"id": f"p-{i:03d}", "name": f"P{i}"} for i in range(1, 11)]

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>shop</body></html>", content_type="text/html")

    async def product_list(request: web.Request) -> web.Response:
        if request.headers.get("X-API-Key") != "demo-key":
            return web.json_response({"title": "unauthorized"}, status=401)
        return web.json_response({"items": products, "next_page_token": None})

    async def product(request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        return web.json_response({"product": {"id": pid}, "degraded": []})

    async def checkout(request: web.Request) -> web.Response:
        if request.app[FAIL_CHECKOUT]:
            return web.json_response({"title": "unavailable"}, status=503)
        assert request.headers.get("Idempotency-Key")
        return web.json_response({"id": f"o-{next(ids)}", "status": "confirmed"})

    async def order(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "status": "confirmed"})

    app = web.Application()
    app[FAIL_CHECKOUT] = fail_checkout
    app.router.add_get("/", page)
    app.router.add_get("/api/products", product_list)
    app.router.add_get("/api/products/{id}", product)
    app.router.add_post("/api/checkout", checkout)
    app.router.add_get("/api/orders/{id}", order)
    return app


@pytest.fixture
async def shop_url() -> AsyncIterator[str]:
    server = TestServer(make_shop(), host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


@pytest.fixture
async def failing_shop_url() -> AsyncIterator[str]:
    server = TestServer(make_shop(fail_checkout=True), host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()
