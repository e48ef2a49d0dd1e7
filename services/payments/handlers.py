"""Payments' RPC methods: thin — ``Payments`` does the work; plus the provider admin route."""

from __future__ import annotations

from aiohttp import web

from mesh.errors import ConfigError
from mesh.rpc import CallContext, RpcService
from observability.app import MAIN_APP_KEY
from services.common.runtime import rpc_errors
from services.payments.api import (
    SERVICE,
    AuditRequest,
    ChargeRequest,
    ChargeResponse,
    PaymentsAudit,
    RefundRequest,
    RefundResponse,
)
from services.payments.charging import Payments

PAYMENTS_KEY = web.AppKey("payments_domain", Payments)

service = RpcService(SERVICE)


@service.method("Charge")
async def charge(req: ChargeRequest, ctx: CallContext) -> ChargeResponse:
    with rpc_errors():
        result = await ctx.app[PAYMENTS_KEY].charge(req, key=ctx.idempotency_key)
    return ChargeResponse(charge=result)


@service.method("Refund")
async def refund(req: RefundRequest, ctx: CallContext) -> RefundResponse:
    with rpc_errors():
        return await ctx.app[PAYMENTS_KEY].refund(req, key=ctx.idempotency_key)


@service.method("Audit", idempotent=True)
async def audit(req: AuditRequest, ctx: CallContext) -> PaymentsAudit:
    return await ctx.app[PAYMENTS_KEY].store.audit()


async def provider_settings(request: web.Request) -> web.Response:
    """Admin: ``GET /provider`` shows, ``PATCH /provider {"decline_probability": 0.5}`` changes
    the simulated provider (latency distribution, decline rate) while the service runs."""
    payments = request.app[MAIN_APP_KEY][PAYMENTS_KEY]
    if request.method == "PATCH":
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ConfigError("send a JSON object of settings to change")
            payments.provider.settings = payments.provider.settings.updated(changes)
        except (ValueError, TypeError, ConfigError) as e:
            return web.json_response({"code": "invalid_argument", "message": str(e)}, status=400)
    s = payments.provider.settings
    return web.json_response(
        {
            "distribution": s.distribution,
            "latency_ms": s.latency_ms,
            "spread": s.spread,
            "max_latency_ms": s.max_latency_ms,
            "decline_probability": s.decline_probability,
            "seed": s.seed,
        }
    )
