"""The five services as real processes in ``saga`` mode: concurrent checkouts, bad input,
recommendations down, and crashes at every saga step — after each, the audit passes.

The processes start once for the module; the tests run in order and each ends with the audit.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from mesh.discovery import StaticDiscovery
from mesh.resilience import profile_named
from mesh.rpc import RpcClient
from services.audit import run_audit_at
from services.catalog import api as catalog_api
from services.inventory import api as inventory_api
from services.orders import api as orders_api
from services.payments import api as payments_api
from services.recommendations.client import product_page
from tests.services.stack import Stack, arm_crash, rpc, set_provider, start_stack
from tests.support.processes import Spawner

pytestmark = pytest.mark.slow

ENV = {
    "TESTBED_CONSISTENCY": "saga",
    "TESTBED_RESILIENCE": "full",
    "ORDERS_LEASE_SECONDS": "2",
    "ORDERS_RECOVERY_INTERVAL": "0.3",
    "ORDERS_SAGA_TIMEOUT": "30",
    "PAYMENTS_LATENCY_DISTRIBUTION": "lognormal",
    "PAYMENTS_LATENCY_MS": "10",
    "PAYMENTS_LATENCY_MAX_MS": "200",
    "PAYMENTS_DECLINE_PROBABILITY": "0.15",
    "PAYMENTS_PENDING_GRACE": "1",
    "PAYMENTS_RECOVERY_INTERVAL": "0.3",
}


@pytest.fixture(scope="module")
def stack(module_spawner: Spawner) -> Stack:
    return start_stack(module_spawner, env=ENV)


def line(n: int, qty: int = 1) -> dict[str, Any]:
    return {"product_id": f"p-{n:03d}", "quantity": qty}


async def place(
    session: aiohttp.ClientSession,
    stack: Stack,
    items: list[dict[str, Any]],
    key: str | None = None,
) -> tuple[int, dict[str, Any]]:
    return await rpc(
        session,
        stack.procs["orders"],
        orders_api.PLACE_ORDER,
        {"customer_id": "tester", "items": items},
        key=key,
    )


async def settle_and_audit(stack: Stack, within: float = 30.0) -> None:
    """Wait until no order is pending, then the audit must pass."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while True:
            status, snap = await rpc(session, stack.procs["orders"], orders_api.AUDIT, {})
            assert status == 200, snap
            pending = [o for o in snap["orders"] if o["status"] == "pending"]
            if not pending:
                break
            assert time.monotonic() < deadline, f"still pending: {pending}"
            await asyncio.sleep(0.3)
    report = await run_audit_at(stack.audit_addresses)
    assert report.ok, (report.errors, report.violations)


async def test_concurrent_checkouts_keep_the_data_consistent(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        # p-010 is scarce: some of these orders run out of stock and fail
        results = await asyncio.gather(
            *(place(session, stack, [line(21 + i % 9, 1 + i % 3), line(10, 1)]) for i in range(40))
        )
    assert all(status == 200 for status, _ in results), results
    statuses = [body["order"]["status"] for _, body in results]
    assert "confirmed" in statuses
    assert "failed" in statuses  # out of stock or declined, compensated
    for _, body in results:
        if body["order"]["status"] == "failed":
            assert body["order"]["failure_reason"]
    await settle_and_audit(stack)


async def _snapshots(session: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    snaps = {}
    for name, path in (
        ("orders", orders_api.AUDIT),
        ("inventory", inventory_api.AUDIT),
        ("payments", payments_api.AUDIT),
        ("catalog", catalog_api.AUDIT),
    ):
        status, body = await rpc(session, stack.procs[name], path, {})
        assert status == 200
        body.pop("taken_at")
        snaps[name] = body
    return snaps


async def test_bad_input_is_refused_with_its_code_and_writes_nothing(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        status, first = await place(session, stack, [line(3)], key="bad-input-key")
        assert status == 200
        existing = first["order"]["order_id"]
        before = await _snapshots(session, stack)
        o, inv, pay = stack.procs["orders"], stack.procs["inventory"], stack.procs["payments"]
        order = orders_api.PLACE_ORDER
        cases: list[tuple[Any, str, dict[str, Any], str | None, str, str]] = [
            (o, order, {"items": [line(999)]}, None, "invalid_argument", "p-999"),
            (
                o,
                order,
                {"items": [{"product_id": "no such", "quantity": 1}]},
                None,
                "invalid_argument",
                "product_id",
            ),
            (o, order, {"items": [line(1, 0)]}, None, "invalid_argument", "quantity"),
            (o, order, {"items": [line(1, -3)]}, None, "invalid_argument", "quantity"),
            (o, order, {"items": [line(1, 10**9)]}, None, "invalid_argument", "quantity"),
            (
                o,
                order,
                {"items": [{"product_id": "p-001", "quantity": "two"}]},
                None,
                "invalid_argument",
                "quantity",
            ),
            (
                o,
                order,
                {"items": [{"product_id": "p-001", "quantity": 1.5}]},
                None,
                "invalid_argument",
                "quantity",
            ),
            (o, order, {"items": []}, None, "invalid_argument", "at least one item"),
            (o, order, {}, None, "invalid_argument", "items"),
            (o, order, {"items": [line(1), line(1)]}, None, "invalid_argument", "appears twice"),
            (o, order, {"items": [line(4)]}, "bad-input-key", "invalid_argument", "already used"),
            (o, orders_api.GET_ORDER, {"order_id": "o-nope"}, None, "not_found", "o-nope"),
            (
                pay,
                payments_api.CHARGE,
                {"order_id": existing, "amount_cents": -5},
                "k1",
                "invalid_argument",
                "amount_cents",
            ),
            (
                pay,
                payments_api.CHARGE,
                {"order_id": existing, "amount_cents": "12.50"},
                "k2",
                "invalid_argument",
                "amount_cents",
            ),
            (
                pay,
                payments_api.CHARGE,
                {"order_id": existing, "amount_cents": 12.5},
                "k3",
                "invalid_argument",
                "amount_cents",
            ),
            (
                pay,
                payments_api.CHARGE,
                {"order_id": existing, "amount_cents": 10**12},
                "k4",
                "invalid_argument",
                "amount_cents",
            ),
            (
                pay,
                payments_api.CHARGE,
                {"order_id": existing, "amount_cents": 100},
                None,
                "invalid_argument",
                "Idempotency-Key",
            ),
            (
                pay,
                payments_api.CHARGE,
                {"order_id": existing, "amount_cents": 1},
                f"charge:{existing}",
                "invalid_argument",
                "already used",
            ),
            (
                pay,
                payments_api.REFUND,
                {"order_id": existing},
                "r1",
                "invalid_argument",
                "exactly one",
            ),
            (
                inv,
                inventory_api.RESERVE,
                {"order_id": "x-1", "items": [line(999)]},
                None,
                "invalid_argument",
                "p-999",
            ),
            (
                inv,
                inventory_api.RESERVE,
                {"order_id": "x-1", "items": [line(1, 0)]},
                None,
                "invalid_argument",
                "quantity",
            ),
            (
                inv,
                inventory_api.RESERVE,
                {"order_id": "x-1", "items": [line(10, 100)]},
                None,
                "failed_precondition",
                "insufficient stock",
            ),
            (
                inv,
                inventory_api.RESERVE,
                {"order_id": existing, "items": [line(5)]},
                None,
                "invalid_argument",
                "different items",
            ),
            (
                inv,
                inventory_api.COMMIT,
                {"order_id": "x-2"},
                None,
                "failed_precondition",
                "no reservation",
            ),
            (
                stack.procs["catalog"],
                catalog_api.GET_PRODUCT,
                {"product_id": "p-999"},
                None,
                "not_found",
                "p-999",
            ),
        ]
        for proc, path, body, key, code, words in cases:
            status, answer = await rpc(session, proc, path, body, key=key)
            assert status != 200, (path, body, answer)
            assert answer["code"] == code, (path, body, answer)
            assert words in answer["message"], (path, body, answer)
        after = await _snapshots(session, stack)
    assert after == before


async def test_product_pages_and_checkouts_work_without_recommendations(stack: Stack) -> None:
    discovery = StaticDiscovery({name: [addr] for name, addr in stack.addresses().items()})
    async with aiohttp.ClientSession() as session:
        catalog = RpcClient(session, discovery, "catalog", profile=profile_named("basic"))
        recs = RpcClient(session, discovery, "recommendations", profile=profile_named("basic"))
        page = await product_page(catalog, recs, "p-001")
        assert page.recommendations.items
        assert not page.recommendations.degraded
        stack.procs["recommendations"].kill()
        try:
            page = await product_page(catalog, recs, "p-002")
            assert page.product.product_id == "p-002"
            assert page.recommendations.degraded
            assert page.recommendations.items == []
            status, body = await place(session, stack, [line(2)])
            assert status == 200, body
            assert body["order"]["status"] in ("confirmed", "failed")
        finally:
            stack.procs["recommendations"].start()
            await stack.procs["recommendations"].wait_ready()
    await settle_and_audit(stack)


@pytest.mark.parametrize(
    ("step", "items"),
    [
        ("started", [line(6)]),
        ("reserved", [line(7)]),
        ("charged", [line(8)]),
        ("compensating", [line(20, 90)]),  # p-020 is scarce: out of stock, compensates
        ("confirmed", [line(9)]),
    ],
)
async def test_orders_crash_after_each_step_is_recovered(
    stack: Stack, step: str, items: list[dict[str, Any]]
) -> None:
    orders = stack.procs["orders"]
    async with aiohttp.ClientSession() as session:
        # no declines: every order must get as far as the step where it crashes
        await set_provider(session, stack.procs["payments"], decline_probability=0.0)
        await arm_crash(session, orders, [step])
        with pytest.raises((aiohttp.ClientError, asyncio.TimeoutError)):
            await place(session, stack, items)
    assert orders.popen is not None
    assert orders.popen.wait(timeout=10) == 137
    orders.start()
    await orders.wait_ready()
    await settle_and_audit(stack)


async def test_payments_crash_in_the_middle_of_a_charge_is_recovered(stack: Stack) -> None:
    payments = stack.procs["payments"]
    async with aiohttp.ClientSession() as session:
        await arm_crash(session, payments, ["charge_pending"])
        status, body = await place(session, stack, [line(11)])
        # orders could not learn the outcome: it compensates, or waits to, while payments is down
        assert status == 200, body
        assert body["order"]["status"] in ("pending", "failed")
        assert payments.popen is not None
        assert payments.popen.wait(timeout=10) == 137
        payments.start()
        await payments.wait_ready()
    await settle_and_audit(stack)
