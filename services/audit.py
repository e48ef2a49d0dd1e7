"""The data audit: gather every service's Audit snapshot over RPC and check them together.

Usable from Python (the chaos engine) and from the ``testbed audit`` command::

    report = await run_audit_at({"orders": "127.0.0.1:8004", "inventory": ..., ...})
    report.ok, report.violations

Orders is read twice, before and after inventory and payments (see ``services.audit_checks``
for why), catalog alongside them. A service that cannot be reached makes the audit fail with
an error naming it: an unverified system is not a consistent one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TypeVar

import aiohttp
from pydantic import BaseModel

from mesh.discovery import Discovery, StaticDiscovery
from mesh.resilience import profile_named
from mesh.rpc import RpcClient, RpcError
from services.audit_checks import AuditReport, AuditSnapshot, run_checks
from services.catalog import api as catalog_api
from services.inventory import api as inventory_api
from services.orders import api as orders_api
from services.payments import api as payments_api

__all__ = ["AuditReport", "gather_snapshot", "run_audit", "run_audit_at"]

M = TypeVar("M", bound=BaseModel)

AUDITED = ("orders", "inventory", "payments", "catalog")


def _address(value: str) -> str:
    """Accept ``host:port`` or ``http://host:port[/]``."""
    value = value.strip().rstrip("/")
    for prefix in ("http://", "https://"):
        if value.startswith(prefix):
            return value[len(prefix) :]
    return value


async def gather_snapshot(
    discovery: Discovery,
    *,
    session: aiohttp.ClientSession | None = None,
    deadline_seconds: float = 15.0,
    include_catalog: bool = True,
) -> tuple[AuditSnapshot | None, list[str]]:
    """The services' snapshots (orders read twice) and the errors of those that did not answer;
    the snapshot is None when orders, inventory or payments is missing."""
    own_session = session is None
    http = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=deadline_seconds))
    profile = profile_named("basic")
    errors: list[str] = []
    try:
        clients = {
            name: RpcClient(http, discovery, name, profile=profile, caller="audit")
            for name in AUDITED
        }

        async def snapshot(name: str, method: str, model: type[M]) -> M | None:
            try:
                return await clients[name].call(
                    method, {}, model, timeout=deadline_seconds, idempotent=True
                )
            except RpcError as e:
                errors.append(f"{name}: {e.code.value}: {e.message}")
                return None

        orders = await snapshot("orders", orders_api.AUDIT, orders_api.OrdersAudit)
        inventory, payments, catalog = await asyncio.gather(
            snapshot("inventory", inventory_api.AUDIT, inventory_api.InventoryAudit),
            snapshot("payments", payments_api.AUDIT, payments_api.PaymentsAudit),
            (
                snapshot("catalog", catalog_api.AUDIT, catalog_api.CatalogAudit)
                if include_catalog
                else asyncio.sleep(0, None)
            ),
        )
        orders_after = (
            await snapshot("orders", orders_api.AUDIT, orders_api.OrdersAudit)
            if orders is not None
            else None
        )
    finally:
        if own_session:
            await http.close()
    if orders is None or inventory is None or payments is None:
        return None, errors
    snap = AuditSnapshot(
        orders=orders,
        inventory=inventory,
        payments=payments,
        orders_after=orders_after,
        catalog=catalog,
    )
    return snap, errors


async def run_audit(
    discovery: Discovery,
    *,
    session: aiohttp.ClientSession | None = None,
    deadline_seconds: float = 15.0,
    include_catalog: bool = True,
) -> AuditReport:
    """Gather the snapshots of the services ``discovery`` knows and run every check."""
    snap, errors = await gather_snapshot(
        discovery,
        session=session,
        deadline_seconds=deadline_seconds,
        include_catalog=include_catalog,
    )
    if snap is None:
        return AuditReport(errors=errors)
    report = run_checks(snap)
    report.errors.extend(errors)
    return report


async def run_audit_at(
    addresses: Mapping[str, str],
    *,
    session: aiohttp.ClientSession | None = None,
    deadline_seconds: float = 15.0,
) -> AuditReport:
    """``run_audit`` over fixed addresses: service name -> ``host:port`` or base URL.

    Catalog is audited only when its address is given.
    """
    discovery = StaticDiscovery({name: [_address(a)] for name, a in addresses.items() if a})
    return await run_audit(
        discovery,
        session=session,
        deadline_seconds=deadline_seconds,
        include_catalog="catalog" in addresses,
    )
