"""Process faults on a real process (signals) and in-service faults through a real admin API."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from chaos.faults import FaultContext, build_fault
from chaos.faults.processes import SignalControl
from chaos.model import FaultStep, ProcessFault, ServiceFault
from chaos.stack import InstanceInfo, StackInfo
from chaos.targets import resolve
from mesh.process import ProcessConfig
from observability.app import create_admin_app, create_base_app
from tests.support.processes import free_port


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


async def _wait_state(pid: int, states: str) -> str:
    for _ in range(100):  # signals are delivered asynchronously
        if (state := _state(pid)) in states:
            return state
        await asyncio.sleep(0.02)
    return _state(pid)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()


async def test_freeze_then_continue(sleeper: subprocess.Popen[bytes], tmp_path: Path) -> None:
    inst = InstanceInfo(service="s", instance_id="s-1", address="127.0.0.1:1", pid=sleeper.pid)
    stack = StackInfo(run_dir=tmp_path, instances=(inst,))
    spec = FaultStep.model_validate(
        {"fault": {"type": "process.freeze", "target": {"service": "s"}}}
    ).fault
    assert isinstance(spec, ProcessFault)
    async with aiohttp.ClientSession() as session:
        ctx = FaultContext(stack, session, None, SignalControl())
        fault = build_fault(
            "1-freeze", spec, resolve(spec.target, "all", stack, seed=0, fault_name="f"), ctx
        )
        await fault.apply()
        assert await _wait_state(sleeper.pid, "T") == "T"
        await fault.rollback()
        assert await _wait_state(sleeper.pid, "SR") in "SR"
        assert fault.details["pids"] == {"s-1": sleeper.pid}


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[InstanceInfo]:
    """A real process-kit app with its admin API, each on its own socket."""
    port, admin_port = free_port(), free_port()
    config = ProcessConfig(
        service="s",
        instance_id="s-1",
        port=port,
        admin_port=admin_port,
        run_dir=tmp_path,
        admin_token="sekret",
    )
    app = create_base_app(config)
    app.router.add_get("/hello", _hello)
    admin = create_admin_app(app)
    servers = [
        TestServer(app, host="127.0.0.1", port=port),
        TestServer(admin, host="127.0.0.1", port=admin_port),
    ]
    for s in servers:
        await s.start_server()
    try:
        yield InstanceInfo(
            service="s",
            instance_id="s-1",
            address=f"127.0.0.1:{port}",
            admin_address=f"127.0.0.1:{admin_port}",
        )
    finally:
        for s in servers:
            await s.close()


async def test_service_error_rate_through_the_admin_api(
    service: InstanceInfo, tmp_path: Path
) -> None:
    stack = StackInfo(run_dir=tmp_path, instances=(service,), admin_token="sekret")
    spec = FaultStep.model_validate(
        {
            "fault": {
                "type": "service.error_rate",
                "target": {"instance": "s-1"},
                "rate": 1.0,
                "status": 503,
                "duration": "5s",
            }
        }
    ).fault
    assert isinstance(spec, ServiceFault)
    async with aiohttp.ClientSession() as session:
        ctx = FaultContext(stack, session, None, SignalControl())
        fault = build_fault(
            "1-errors", spec, resolve(spec.target, "all", stack, seed=0, fault_name="e"), ctx
        )
        await fault.apply()
        async with session.get(service.url + "/hello") as resp:
            assert resp.status == 503
        async with session.get(
            f"{service.admin_url}/faults", headers={"X-Admin-Token": "sekret"}
        ) as resp:
            active = (await resp.json())["faults"]
        assert [(f["kind"], f["spec"]["duration_s"]) for f in active] == [("error", 35.0)]
        await fault.rollback()
        async with session.get(service.url + "/hello") as resp:
            assert resp.status == 200
