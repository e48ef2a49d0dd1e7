"""The same crash schedule in ``naive`` mode (no idempotency keys, compensation or recovery):
the audit must report violations — proof that it can fail and that the drawback is real."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from services.audit import run_audit_at
from services.orders import api as orders_api
from tests.services.stack import Stack, arm_crash, rpc, start_stack
from tests.support.processes import Spawner

pytestmark = pytest.mark.slow

SAGA_TIMEOUT = 2.0
ENV = {
    "TESTBED_CONSISTENCY": "naive",
    "ORDERS_LEASE_SECONDS": "1",
    "ORDERS_RECOVERY_INTERVAL": "0.3",
    "ORDERS_SAGA_TIMEOUT": str(SAGA_TIMEOUT),
    "PAYMENTS_LATENCY_MS": "10",
    "PAYMENTS_LATENCY_MAX_MS": "200",
    "PAYMENTS_DECLINE_PROBABILITY": "0",
    "PAYMENTS_PENDING_GRACE": "1",
    "PAYMENTS_RECOVERY_INTERVAL": "0.3",
}


@pytest.fixture(scope="module")
def stack(module_spawner: Spawner) -> Stack:
    return start_stack(
        module_spawner, env=ENV, services=("catalog", "inventory", "payments", "orders")
    )


async def place(session: aiohttp.ClientSession, stack: Stack, product: str) -> dict[str, Any]:
    status, body = await rpc(
        session,
        stack.procs["orders"],
        orders_api.PLACE_ORDER,
        {"items": [{"product_id": product, "quantity": 1}]},
    )
    assert status == 200, body
    return body


async def test_naive_mode_breaks_under_the_same_crashes(stack: Stack) -> None:
    orders, payments = stack.procs["orders"], stack.procs["payments"]
    async with aiohttp.ClientSession() as session:
        body = await place(session, stack, "p-001")
        assert body["order"]["status"] == "confirmed"  # without faults, naive works
        for step in ("started", "reserved", "charged"):
            await arm_crash(session, orders, [step])
            with pytest.raises((aiohttp.ClientError, asyncio.TimeoutError)):
                await place(session, stack, "p-002")
            assert orders.popen is not None
            assert orders.popen.wait(timeout=10) == 137
            orders.start()
            await orders.wait_ready()
        await arm_crash(session, payments, ["charge_pending"])
        body = await place(session, stack, "p-003")
        assert body["order"]["status"] == "failed"  # no compensation, the charge stays open
        assert payments.popen is not None
        assert payments.popen.wait(timeout=10) == 137
        payments.start()
        await payments.wait_ready()
    await asyncio.sleep(SAGA_TIMEOUT + 1.5)  # longer than any saga may stay pending
    report = await run_audit_at(stack.audit_addresses)
    assert not report.ok
    failed = {c.name for c in report.checks if not c.ok}
    assert "nothing_stuck" in failed, report.violations
    stuck = [v for v in report.violations if v.check == "nothing_stuck"]
    assert len({v.subject for v in stuck}) >= 3  # the three orders orders crashed on
    assert all(v.subject.startswith("order o-") for v in report.violations)
