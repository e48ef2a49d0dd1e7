"""The gateway's whole URL map, on one screen.

Public, no key: ``/`` and ``/static/*`` (storefront), ``/images/v1/products/{id}.svg``,
``/openapi.json``, and the process kit's ``/healthz``, ``/readyz``, ``/metrics``.
Key required (``X-API-Key``): everything under ``/api/``.
The admin API (faults) is served on the admin listener only; no route here reaches it.
"""

from __future__ import annotations

import hashlib

from aiohttp import web
from aiohttp.typedefs import Handler

from edge.gateway import handlers, storefront
from edge.gateway.openapi import openapi_bytes

OPENAPI_CACHE = "public, max-age=300"


def _openapi_handler() -> Handler:
    body = openapi_bytes()
    asset = storefront.Asset(
        body=body,
        content_type="application/json",
        etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
        cache_control=OPENAPI_CACHE,
    )

    async def openapi(request: web.Request) -> web.Response:
        return storefront.serve(request, asset)

    return openapi


def setup_routes(app: web.Application, shop: storefront.Storefront) -> None:
    """Add every public route of the gateway to ``app``."""
    router = app.router
    router.add_get("/openapi.json", _openapi_handler(), name="openapi")
    router.add_get("/api/products", handlers.list_products, name="list_products")
    router.add_get("/api/products/{id}", handlers.get_product, name="get_product")
    router.add_post("/api/checkout", handlers.checkout, name="checkout")
    router.add_get("/api/orders/{id}", handlers.get_order, name="get_order")
    storefront.add_routes(app, shop)
