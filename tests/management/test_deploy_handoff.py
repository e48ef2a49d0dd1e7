"""A single-instance listener deployed under load loses nothing (real supervisord, processes).

The balancer runs as one instance: ``testbed deploy`` hands its port over to the new version
(``Stack._hand_over``, ``observability.handoff``) while a few keep-alive clients hammer it.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from management.stack import NEXT_SUFFIX, Stack, down, up
from tests.support.processes import REPO_ROOT

pytestmark = pytest.mark.slow

TOPOLOGY = """\
name: handoff
components:
  backend:
    kind: service
    module: tests.management.demo_app
    proxied: false
    register: false
    env: {DEMO_ROLE: backend, PYTHONPATH: "@ROOT@"}
  lb:
    kind: balancer
    register: false
    env: {BALANCER_UPSTREAM: backend, PYTHONPATH: "@ROOT@"}
links:
  - {from: lb, to: backend}
defaults: {drain_seconds: 1}
""".replace("@ROOT@", str(REPO_ROOT))


async def _client(url: str, outcomes: Counter[str], stop: asyncio.Event) -> None:
    """A keep-alive client in a loop, as a PoP is to the balancer (aiohttp repeats an
    idempotent request once when its pooled connection turns out closed)."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while not stop.is_set():
            try:
                async with http.get(url) as resp:
                    await resp.read()
                    outcomes[str(resp.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcomes[type(exc).__name__] += 1
            await asyncio.sleep(0.005)


def _program_version(stack: Stack, name: str) -> str | None:
    path = stack.programs_dir / f"{name}.conf"
    if not path.exists():
        return None
    found = re.search(r'TESTBED_VERSION="([^"]+)"', path.read_text())
    return found.group(1) if found else None


async def test_balancer_deploy_under_load_loses_nothing(tmp_path: Path, base_port: int) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    run_dir = tmp_path / "run"
    stack = await up(
        topology=topology, run_dir=run_dir, base_port=base_port, jaeger=False, trace_ui=False
    )
    try:
        (lb,) = stack.plan.of("lb")
        temp = lb.instance_id + NEXT_SUFFIX
        outcomes: Counter[str] = Counter()
        stop = asyncio.Event()
        clients = [asyncio.create_task(_client(lb.url + "/work", outcomes, stop)) for _ in range(4)]
        for _ in range(200):  # traffic flows before the deploy starts
            if outcomes["200"] >= 50:
                break
            await asyncio.sleep(0.05)

        # -- Ctrl-C once the old version is stopped: it is put back, the temporary one goes.
        lines: list[str] = []

        def interrupt_after_stop(line: str) -> None:
            lines.append(line)
            if "starting v2" in line:
                deploying.cancel()

        stack.progress = interrupt_after_stop
        deploying = asyncio.create_task(stack.deploy("lb", "v2"))
        with pytest.raises(asyncio.CancelledError):
            await deploying
        assert any("putting v1 back" in line for line in lines), lines
        assert _program_version(stack, lb.instance_id) == "v1"
        assert _program_version(stack, temp) is None
        assert stack.plan.instance(lb.instance_id).version == "v1"

        # -- the whole hand-over
        before = sum(outcomes.values())
        await stack.deploy("lb", "v2")
        during = sum(outcomes.values()) - before
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*clients)

        assert during > 50  # the clients kept going through the hand-over
        assert set(outcomes) == {"200"}, outcomes
        assert _program_version(stack, lb.instance_id) == "v2"
        assert stack.plan.instance(lb.instance_id).version == "v2"
        procs = {p["name"]: p["statename"] for p in await stack.supervisor.aprocesses()}
        assert procs[lb.instance_id] == "RUNNING"
        assert temp not in procs
    finally:
        down(run_dir)
