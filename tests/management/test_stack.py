"""The embedded stack end to end, with real supervisord, Toxiproxy, Prometheus and processes.

up -> status all ready -> traffic -> scale up and down -> rolling deploy under a request loop
with zero failed requests -> registry stopped: traffic keeps flowing -> kill -9 of an instance is
restarted and re-registers -> down leaves no process. One stack for the whole story, to keep the
suite lean on two shared cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from chaos.stack import from_management
from management.cli import cli
from management.stack import AlreadyUp, Stack, _marked_pids, _pid_alive, down, up
from mesh.process import DEFAULT_ADMIN_TOKEN
from mesh.registry_client import RegistryClient
from tests.support.processes import REPO_ROOT

pytestmark = pytest.mark.slow

TOPOLOGY = """\
name: demo
components:
  registry: {kind: registry}
  backend:
    kind: service
    module: tests.management.demo_app
    instances: 2
    env: {DEMO_ROLE: backend, PYTHONPATH: "@ROOT@"}
  front:
    kind: gateway
    module: tests.management.demo_app
    proxied: false
    env: {DEMO_ROLE: front, PYTHONPATH: "@ROOT@"}
links:
  - {from: front, to: backend}
defaults: {drain_seconds: 1, registry_ttl_seconds: 2}
""".replace("@ROOT@", str(REPO_ROOT))


@dataclass
class Load:
    """A background request loop through the front; counts answers by status and backend."""

    url: str
    statuses: Counter[int] = field(default_factory=Counter)
    seen: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    running: bool = True

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while self.running:
                try:
                    async with http.get(self.url) as resp:
                        body = await resp.json()
                        self.statuses[resp.status] += 1
                        if resp.status == 200:
                            self.seen[f"{body['instance']}@{body['version']}"] += 1
                        else:
                            self.errors.append(str(body))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.statuses[0] += 1
                    self.errors.append(repr(exc))
                await asyncio.sleep(0.01)

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.statuses.items() if code != 200)


async def _until(predicate: Callable[[], bool], within: float = 20.0) -> None:
    for _ in range(int(within * 10)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true after {within}s")


async def _registered(stack: Stack, service: str) -> dict[str, str]:
    assert stack.plan.registry_url is not None
    async with aiohttp.ClientSession() as http:
        view = await RegistryClient(http, stack.plan.registry_url).service(service)
    return {i.id: i.version for i in view.instances}


async def test_stack_lifecycle(tmp_path: Path, base_port: int) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    run_dir = tmp_path / "run"
    stack = await up(
        topology=topology, run_dir=run_dir, base_port=base_port, jaeger=False, trace_ui=False
    )
    load: Load | None = None
    loop_task: asyncio.Task[None] | None = None
    try:
        # -- up twice says already up, and where
        with pytest.raises(AlreadyUp, match=str(run_dir)):
            await up(
                topology=topology,
                run_dir=run_dir,
                base_port=base_port,
                jaeger=False,
                trace_ui=False,
            )

        # -- status: every instance running, ready, registered
        rows = {r.instance: r for r in await stack.status()}
        for name in ("registry-1", "backend-1", "backend-2", "front-1", "toxiproxy", "prometheus"):
            assert (rows[name].state, rows[name].ready) == ("RUNNING", True), rows[name]
        assert rows["backend-1"].registered
        assert rows["front-1"].registered
        assert rows["backend-1"].address == stack.plan.instance("backend-1").advertise
        result = await asyncio.to_thread(
            CliRunner().invoke, cli, ["status", "--run-dir", str(run_dir)]
        )
        assert result.exit_code == 0, result.output
        assert "backend-2" in result.output
        assert "RUNNING" in result.output

        # -- Prometheus loaded the alert rules generated from the topology
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(stack.prometheus_url + "/api/v1/rules") as resp,
        ):
            groups = {g["name"] for g in (await resp.json())["data"]["groups"]}
        assert {"testbed-backend", "testbed-front", "testbed-monitoring"} <= groups

        # -- a random admin token per run, in the run's state (user-only), in every process
        token = stack.admin_token
        assert token is not None
        assert token != DEFAULT_ADMIN_TOKEN
        assert len(token) >= 24
        assert (run_dir / "state.json").stat().st_mode & 0o777 == 0o600
        for conf in (run_dir / "supervisor" / "programs").glob("*.conf"):
            assert conf.stat().st_mode & 0o777 == 0o600, conf
        info = await from_management(stack)
        assert info.admin_token == token
        admin = f"http://127.0.0.1:{stack.plan.instance('backend-1').admin_port}/faults"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for given, status in ((DEFAULT_ADMIN_TOKEN, 401), (token, 200)):
                async with http.get(admin, headers={"X-Admin-Token": given}) as resp:
                    assert resp.status == status

        # -- traffic through the front reaches both backends through their proxies
        front = stack.plan.instance("front-1").url + "/work"
        load = Load(front)
        loop_task = asyncio.create_task(load.run())
        await _until(lambda: {"backend-1@v1", "backend-2@v1"} <= set(load.seen))

        # -- scale up: the new instance gets traffic; scale down: drained first
        added, removed = await stack.scale("backend", 3)
        assert added == ["backend-3"]
        assert removed == []
        await _until(lambda: "backend-3@v1" in load.seen)
        added, removed = await stack.scale("backend", 2)
        assert removed == ["backend-3"]
        assert set(await _registered(stack, "backend")) == {"backend-1", "backend-2"}

        # -- rolling deploy under load: no failed request
        seconds = await stack.deploy("backend", "v2")
        assert seconds > 0
        assert await _registered(stack, "backend") == {"backend-1": "v2", "backend-2": "v2"}
        before = sum(load.seen.values())
        await _until(lambda: sum(load.seen.values()) > before + 20)
        assert load.failed == 0, load.errors[:5]
        assert {"backend-1@v2", "backend-2@v2"} <= set(load.seen)
        # the same version again changes nothing: no instance is drained and left out
        await stack.deploy("backend", "v2")
        assert await _registered(stack, "backend") == {"backend-1": "v2", "backend-2": "v2"}

        # -- the registry goes away: traffic keeps flowing to the instances callers knew
        await stack.supervisor.stop("registry-1")
        before = sum(load.seen.values())
        await asyncio.sleep(2.5)  # longer than the TTL
        assert sum(load.seen.values()) > before + 20
        assert load.failed == 0, load.errors[:5]
        await stack.supervisor.start("registry-1")
        load.running = False
        await loop_task

        # -- kill -9: supervisord restarts it and it registers again
        await stack.wait_ready(stack.plan.instances, within=30)
        victim = next(r for r in await stack.status() if r.instance == "backend-1")
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)

        async def restarted() -> bool:
            row = next(r for r in await stack.status() if r.instance == "backend-1")
            return bool(row.pid and row.pid != victim.pid and row.ready and row.registered)

        for _ in range(150):
            if await restarted():
                break
            await asyncio.sleep(0.2)
        row = next(r for r in await stack.status() if r.instance == "backend-1")
        assert row.restarts >= 1
    finally:
        if loop_task is not None and load is not None:
            load.running = False
            with contextlib.suppress(Exception):
                await loop_task
        supervisord_pid = stack.state.get("supervisord_pid")
        await asyncio.to_thread(down, run_dir)

    # -- down leaves no process and no stale state
    assert isinstance(supervisord_pid, int)
    assert not _pid_alive(supervisord_pid)
    assert _marked_pids(run_dir.resolve()) == []
    assert not stack.supervisor.socket.exists()
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["status", "--run-dir", str(run_dir)])
    assert result.exit_code != 0
