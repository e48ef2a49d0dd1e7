"""The monolith topology end to end: ``up``, a checkout through a PoP, a clean audit."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from management.cli import cli
from management.stack import down, up
from tests.support.processes import REPO_ROOT

pytestmark = pytest.mark.slow

TOPOLOGY = REPO_ROOT / "management" / "topology.monolith.yaml"


async def test_monolith_checkout_through_a_pop_audits_clean(tmp_path: Path, base_port: int) -> None:
    run_dir = tmp_path / "run"
    stack = await up(topology=TOPOLOGY, run_dir=run_dir, base_port=base_port, jaeger=False)
    try:
        pop = stack.plan.instance("cdn-us").url
        shop = stack.plan.instance("shop-1").url
        headers = {"X-API-Key": "demo-key", "Idempotency-Key": f"mono-{uuid.uuid4().hex}"}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.post(
                f"{pop}/api/checkout",
                json={"items": [{"product_id": "p-002", "quantity": 2}]},
                headers=headers,
            ) as resp:
                body = await resp.json()
                assert resp.status in (200, 201), body
            assert body["status"] == "confirmed", body
            async with http.get(f"{shop}/metrics") as resp:
                metrics = await resp.text()
        # The saga's calls stayed inside the process: counted by orders' RpcClient there.
        assert 'hosted_service="orders",method="Charge",upstream="payments"' in metrics
        result = await asyncio.to_thread(
            CliRunner().invoke, cli, ["audit", "--run-dir", str(run_dir), "--json"]
        )
        assert result.exit_code == 0, result.output
        assert '"orders_confirmed": 1' in result.output
    finally:
        await asyncio.to_thread(down, run_dir)
