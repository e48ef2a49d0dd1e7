"""Catalog's RPC methods: thin — parse (done by the RPC layer), query the store, answer.

List and detail answers carry ``Cache-Control`` and a strong ``ETag`` (a hash of the answer's
body), so the CDN can cache them and revalidate.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time

from aiohttp import web
from pydantic import BaseModel

from mesh.rpc import CallContext, RpcService
from services.catalog.api import (
    SERVICE,
    AuditRequest,
    CatalogAudit,
    GetProductRequest,
    GetProductResponse,
    ListProductsRequest,
    ListProductsResponse,
)
from services.catalog.config import Config
from services.catalog.store import CatalogStore
from services.common.errors import InvalidArgument, NotFound
from services.common.runtime import rpc_errors

STORE_KEY = web.AppKey("catalog_store", CatalogStore)
CONFIG_KEY = web.AppKey("catalog_config", Config)

service = RpcService(SERVICE)


def etag_of(message: BaseModel) -> str:
    return '"' + hashlib.sha256(message.model_dump_json().encode()).hexdigest()[:32] + '"'


def _cacheable(ctx: CallContext, message: BaseModel) -> None:
    ctx.response_headers["Cache-Control"] = ctx.app[CONFIG_KEY].cache_control
    ctx.response_headers["ETag"] = etag_of(message)


_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]*")


def encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    """The product id a page token continues after.

    Total over the tokens the public API lets through (base64url characters, up to 64): a
    token is a cursor, not a secret, so one this service never gave out is not refused, it
    just starts the page after whatever id it decodes to (a dangling last character is
    ignored, undecodable bytes replaced). Anything else is refused, naming the fix.
    """
    if not token:
        return ""
    if not _TOKEN_RE.fullmatch(token):
        raise InvalidArgument(
            "page_token is not one this service gave out; pass next_page_token unchanged"
        )
    usable = token[: len(token) - 1] if len(token) % 4 == 1 else token
    raw = base64.urlsafe_b64decode(usable + "=" * (-len(usable) % 4))
    return raw.decode("utf-8", "replace")


@service.method("ListProducts", idempotent=True)
async def list_products(req: ListProductsRequest, ctx: CallContext) -> ListProductsResponse:
    with rpc_errors():
        after = decode_token(req.page_token)
    products, more = await ctx.app[STORE_KEY].list_products(
        after=after, limit=req.page_size, category=req.category
    )
    answer = ListProductsResponse(
        products=products,
        next_page_token=encode_token(products[-1].product_id) if more and products else "",
    )
    _cacheable(ctx, answer)
    return answer


@service.method("GetProduct", idempotent=True)
async def get_product(req: GetProductRequest, ctx: CallContext) -> GetProductResponse:
    product = await ctx.app[STORE_KEY].get_product(req.product_id)
    if product is None:
        with rpc_errors():
            raise NotFound(f"product {req.product_id} does not exist; list them with ListProducts")
    answer = GetProductResponse(product=product)
    _cacheable(ctx, answer)
    return answer


@service.method("Audit", idempotent=True)
async def audit(req: AuditRequest, ctx: CallContext) -> CatalogAudit:
    products = await ctx.app[STORE_KEY].all_products()
    return CatalogAudit(taken_at=time.time(), products=products)
