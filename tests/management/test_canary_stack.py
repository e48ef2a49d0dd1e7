"""A canary on a real stack: a bad new version takes its share, is judged worse from
Prometheus and rolled back, and the old instances are never touched."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from management.plan import InstancePlan
from management.stack import down, up
from mesh.errors import ConfigError
from mesh.registry_client import RegistryClient
from tests.management.test_stack import TOPOLOGY, Load, _until

pytestmark = pytest.mark.slow


async def test_a_bad_canary_is_rolled_back_and_nothing_else_moves(
    tmp_path: Path, base_port: int
) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    run_dir = tmp_path / "run"
    stack = await up(
        topology=topology, run_dir=run_dir, base_port=base_port, jaeger=False, trace_ui=False
    )
    load = Load(stack.plan.instance("front-1").url + "/work")
    loop_task = asyncio.create_task(load.run())
    try:
        await _until(lambda: {"backend-1@v1", "backend-2@v1"} <= set(load.seen))
        pids = {r.instance: r.pid for r in await stack.status()}

        # Bad input is refused before anything starts.
        with pytest.raises(ConfigError, match="RPC services"):
            await stack.canary("front", "v2")
        with pytest.raises(ConfigError, match="at v1 already"):
            await stack.canary("backend", "v1")
        assert stack.canaries == {}

        @contextlib.asynccontextmanager
        async def bad_build(inst: InstancePlan) -> AsyncIterator[None]:
            """The new version fails half its requests (the canary instance only)."""
            assert stack.admin_token is not None
            async with (
                aiohttp.ClientSession() as http,
                http.put(
                    f"http://127.0.0.1:{inst.admin_port}/faults/error",
                    json={"rate": 0.5, "status": 500},
                    headers={"X-Admin-Token": stack.admin_token},
                ) as resp,
            ):
                assert resp.status == 200, await resp.text()
            yield

        result = await stack.canary("backend", "v2", share=0.3, judge_for=6, during=bad_build)

        verdict = result.judgement
        assert (verdict.decision, result.action) == ("rollback", "rolled back"), verdict
        assert verdict.new.error_ratio is not None
        assert verdict.new.error_ratio > 0.2
        assert verdict.old.errors == 0
        assert verdict.share is not None
        assert 0.1 < verdict.share < 0.5
        assert "backend-canary@v2" in load.seen
        # Gone from the registry, the plan and the state; the old instances never restarted.
        assert stack.plan.registry_url is not None
        async with aiohttp.ClientSession() as http:
            view = await RegistryClient(http, stack.plan.registry_url).service("backend")
        assert {i.id: i.version for i in view.instances} == {"backend-1": "v1", "backend-2": "v1"}
        assert stack.canaries == {}
        assert [i.instance_id for i in stack.plan.of("backend")] == ["backend-1", "backend-2"]
        after = {r.instance: r.pid for r in await stack.status()}
        assert after == {k: v for k, v in pids.items()}
        before = sum(load.seen.values())
        await _until(lambda: sum(load.seen.values()) > before + 20)
        assert set(load.seen) == {"backend-1@v1", "backend-2@v1", "backend-canary@v2"}
    finally:
        load.running = False
        with contextlib.suppress(Exception):
            await loop_task
        await asyncio.to_thread(down, run_dir)
