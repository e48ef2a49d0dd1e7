"""The ``ejection`` probe: seconds from a fault to the balancer's ejection of its instance,
read from a real balancer's admin API on a real socket."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from chaos.journal import Journal
from chaos.loader import ExperimentError, parse_experiment
from chaos.model import EjectionProbe, Tolerance
from chaos.probes import ProbeContext, evaluate
from chaos.stack import InstanceInfo, StackInfo
from edge.balancer import BalancerConfig, create_app
from edge.balancer.app import POOL_KEY, create_balancer_admin_app
from edge.balancer.pool import UpstreamPool
from mesh.discovery import StaticDiscovery
from mesh.process import ProcessConfig
from tests.support.processes import free_port

GATEWAYS = ("127.0.0.1:9001", "127.0.0.1:9002")  # never contacted: no checks run


@pytest.fixture
async def balancer_admin() -> AsyncIterator[tuple[UpstreamPool, str]]:
    """A real balancer app (its checks far apart) and its admin API on a loopback socket."""
    config = BalancerConfig(
        process=ProcessConfig(service="balancer", instance_id="balancer-1"),
        health_interval=60.0,
        health_timeout=60.0,
    )
    app = create_app(
        config,
        discovery=StaticDiscovery({"gateway": list(GATEWAYS)}),
        registry=CollectorRegistry(),
        tracer_provider=TracerProvider(),
    )
    runner = web.AppRunner(create_balancer_admin_app(app))  # the pool needs no traffic
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    pool = app[POOL_KEY]
    pool.candidates()
    yield pool, f"127.0.0.1:{port}"
    await runner.cleanup()


def _journal(tmp_path: Path, applied_ago: float | None, address: str) -> Journal:
    journal = Journal.create(tmp_path / "journal.json", experiment={}, source=None)
    now = time.time()
    journal.data["faults"].append(
        {
            "id": "1-freeze-gateway",
            "name": "freeze-gateway",
            "planned_at": None if applied_ago is None else now - applied_ago - 0.01,
            "applied_at": None if applied_ago is None else now - applied_ago,
            "units": [
                {"id": "gateway-1", "proxy": None, "instance": {"address": address}},
            ],
        }
    )
    return journal


async def _measure(pool_admin: str, journal: Journal, tmp_path: Path) -> Any:
    balancer = InstanceInfo(
        service="balancer",
        instance_id="balancer-1",
        address="127.0.0.1:1",
        admin_address=pool_admin,
    )
    stack = StackInfo(run_dir=tmp_path, instances=(balancer,))
    probe = EjectionProbe(type="ejection", fault="freeze-gateway", tolerance=Tolerance(max=1.0))
    async with aiohttp.ClientSession() as session:
        return await evaluate(probe, "time-to-ejection", ProbeContext(stack, session, journal))


async def test_seconds_from_the_fault_to_the_ejection_of_its_instance(
    balancer_admin: tuple[UpstreamPool, str], tmp_path: Path
) -> None:
    pool, admin = balancer_admin
    journal = _journal(tmp_path, 0.4, GATEWAYS[0])
    pool.connect_failed(pool.candidates()[1])  # the other instance: not this fault's
    pool.connect_failed(pool.candidates()[0])
    result = await _measure(admin, journal, tmp_path)
    assert isinstance(result.value, float)
    assert 0.35 <= result.value < 5.0
    assert result.ok == (result.value <= 1.0)
    assert "gateway-1 out" in (result.detail or "")
    assert "connect_error" in (result.detail or "")


async def test_no_value_when_the_instance_was_never_ejected(
    balancer_admin: tuple[UpstreamPool, str], tmp_path: Path
) -> None:
    pool, admin = balancer_admin
    pool.connect_failed(pool.candidates()[1])
    result = await _measure(admin, _journal(tmp_path, 0.4, GATEWAYS[0]), tmp_path)
    assert result.value is None
    assert not result.ok
    assert "never taken out of rotation" in (result.detail or "")
    result = await _measure(admin, _journal(tmp_path, None, GATEWAYS[0]), tmp_path)
    assert result.value is None
    assert "was not applied" in (result.detail or "")


def test_the_probe_must_name_a_fault_of_the_method() -> None:
    text = """
title: t
hypothesis: h
method:
  - fault: {name: freeze-gateway, type: process.freeze, target: {service: gateway},
            duration: 1s}
verify:
  - {name: tte, type: ejection, fault: freeze-gatewy, tolerance: {max: 1.0}}
"""
    with pytest.raises(ExperimentError, match="'freeze-gatewy' is not a fault of the method"):
        parse_experiment(text)
