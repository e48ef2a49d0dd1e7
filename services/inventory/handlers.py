"""Inventory's RPC methods: thin — the store does the work in one transaction each."""

from __future__ import annotations

from aiohttp import web

from mesh.rpc import CallContext, RpcService
from services.common.runtime import rpc_errors
from services.inventory.api import (
    SERVICE,
    AuditRequest,
    CommitRequest,
    GetAvailabilityRequest,
    GetAvailabilityResponse,
    InventoryAudit,
    ReleaseRequest,
    ReservationResponse,
    ReserveRequest,
)
from services.inventory.store import InventoryStore

STORE_KEY = web.AppKey("inventory_store", InventoryStore)

service = RpcService(SERVICE)


@service.method("GetAvailability", idempotent=True)
async def get_availability(
    req: GetAvailabilityRequest, ctx: CallContext
) -> GetAvailabilityResponse:
    with rpc_errors():
        items = await ctx.app[STORE_KEY].availability(req.product_ids)
    return GetAvailabilityResponse(items=items)


@service.method("Reserve")
async def reserve(req: ReserveRequest, ctx: CallContext) -> ReservationResponse:
    with rpc_errors():
        reservation = await ctx.app[STORE_KEY].reserve(
            req.order_id, req.items, ttl_seconds=req.ttl_seconds
        )
    return ReservationResponse(reservation=reservation)


@service.method("Release")
async def release(req: ReleaseRequest, ctx: CallContext) -> ReservationResponse:
    with rpc_errors():
        reservation = await ctx.app[STORE_KEY].release(req.order_id, reason=req.reason)
    return ReservationResponse(reservation=reservation)


@service.method("Commit")
async def commit(req: CommitRequest, ctx: CallContext) -> ReservationResponse:
    with rpc_errors():
        reservation = await ctx.app[STORE_KEY].commit(req.order_id)
    return ReservationResponse(reservation=reservation)


@service.method("Audit", idempotent=True)
async def audit(req: AuditRequest, ctx: CallContext) -> InventoryAudit:
    return await ctx.app[STORE_KEY].audit()
