"""The storefront: static files and generated product images, served with cache headers.

The gateway is the storefront's origin; users fetch it through their region's CDN PoP, so
every answer says how long it may be cached:

- ``/`` (the page): ``public, max-age=60`` — short, so a new release shows up within a minute.
- ``/static/app.<hash>.css|js``: fingerprinted names (hash of the content, computed at start),
  ``public, max-age=31536000, immutable`` — a new release gets new names, never a stale file.
- ``/images/v1/products/<id>.svg``: generated from the id alone, hence the same forever; also
  ``immutable`` (the ``v1`` in the path changes if the drawing does).

All carry a strong ``ETag`` and answer ``If-None-Match`` with 304. The files are read once when
the app is built (a handful of kilobytes), never from disk per request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from edge.gateway.images import IMAGE_VERSION, product_svg
from edge.gateway.inputs import path_id
from edge.gateway.problems import ProblemError

PAGE_CACHE = "public, max-age=60"
IMMUTABLE_CACHE = "public, max-age=31536000, immutable"
_ASSETS = {"app.css": "text/css", "app.js": "text/javascript"}


@dataclass(frozen=True)
class Asset:
    """One file as served: bytes, type and validator."""

    body: bytes
    content_type: str
    etag: str
    cache_control: str


def _asset(body: bytes, content_type: str, cache_control: str) -> Asset:
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body=body, content_type=content_type, etag=etag, cache_control=cache_control)


def _fingerprinted(name: str, body: bytes) -> str:
    stem, _, ext = name.rpartition(".")
    return f"{stem}.{hashlib.sha256(body).hexdigest()[:12]}.{ext}"


@dataclass(frozen=True)
class Storefront:
    """The built storefront: the rendered page and the fingerprinted assets by URL name."""

    page: Asset
    assets: dict[str, Asset]

    @classmethod
    def load(cls, api_key: str) -> Storefront:
        """Read the files shipped in ``edge/gateway/static`` and render the page for ``api_key``."""
        folder = resources.files("edge.gateway") / "static"
        assets: dict[str, Asset] = {}
        page = (folder / "index.html").read_text(encoding="utf-8")
        for name, ctype in _ASSETS.items():
            body = (folder / name).read_bytes()
            url_name = _fingerprinted(name, body)
            assets[url_name] = _asset(body, ctype + "; charset=utf-8", IMMUTABLE_CACHE)
            page = page.replace("{{" + name + "}}", f"/static/{url_name}")
        page = page.replace("{{api_key}}", _attr(api_key))
        return cls(
            page=_asset(page.encode(), "text/html; charset=utf-8", PAGE_CACHE), assets=assets
        )

    def asset_urls(self) -> list[str]:
        return [f"/static/{name}" for name in sorted(self.assets)]


def _attr(value: str) -> str:
    return (
        value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    )


def serve(request: web.Request, asset: Asset) -> web.Response:
    """``asset`` with its cache headers, or 304 if the client's copy is current."""
    headers = {"Cache-Control": asset.cache_control, "ETag": asset.etag}
    inm = request.headers.get("If-None-Match")
    if inm is not None and (inm.strip() == "*" or asset.etag in _etags(inm)):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


STOREFRONT_KEY = web.AppKey("gateway_storefront", Storefront)


async def page(request: web.Request) -> web.Response:
    return serve(request, request.app[STOREFRONT_KEY].page)


async def static_asset(request: web.Request) -> web.Response:
    asset = request.app[STOREFRONT_KEY].assets.get(request.match_info["name"])
    if asset is None:
        raise ProblemError(404, "not-found", "no such file")
    return serve(request, asset)


async def product_image(request: web.Request) -> web.Response:
    product_id = path_id(request)
    return serve(request, _asset(product_svg(product_id), "image/svg+xml", IMMUTABLE_CACHE))


def add_routes(app: web.Application, storefront: Storefront) -> None:
    """Serve ``storefront`` from ``app``: the page, its assets and the product images."""
    app[STOREFRONT_KEY] = storefront
    app.router.add_get("/", page, name="storefront_page")
    app.router.add_get("/static/{name}", static_asset, name="storefront_asset")
    app.router.add_get(
        f"/images/{IMAGE_VERSION}/products/{{id}}.svg", product_image, name="product_image"
    )
