"""Network faults against a REAL toxiproxy-server proxying a small real aiohttp app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from chaos.faults import FaultContext, build_fault, fault_from_record
from chaos.faults.processes import SignalControl
from chaos.faults.toxiproxy import ToxiproxyClient, ToxiproxyError
from chaos.model import FaultStep, NetworkFault
from chaos.stack import InstanceInfo, StackInfo
from chaos.targets import resolve
from tests.chaos.conftest import timed_get
from tests.support.processes import free_port


@pytest.fixture
async def proxied(
    toxiproxy_url: str, upstream: str, tmp_path: Path
) -> AsyncIterator[tuple[FaultContext, str]]:
    """A context whose one instance ``echo-1`` sits behind proxy ``echo-1``; yields its URL."""
    client = ToxiproxyClient(toxiproxy_url)
    listen = f"127.0.0.1:{free_port()}"
    await client.create_proxy("echo-1", upstream=upstream, listen=listen)
    inst = InstanceInfo(service="echo", instance_id="echo-1", address=listen, proxy="echo-1")
    stack = StackInfo(run_dir=tmp_path, instances=(inst,), toxiproxy_url=toxiproxy_url)
    async with aiohttp.ClientSession() as session:
        yield FaultContext(stack, session, client, SignalControl()), f"http://{listen}/"


def _fault(**fields: object) -> NetworkFault:
    spec = FaultStep.model_validate({"fault": {"target": {"service": "echo"}, **fields}}).fault
    assert isinstance(spec, NetworkFault)
    return spec


async def test_latency_is_applied_and_rolled_back(proxied: tuple[FaultContext, str]) -> None:
    ctx, url = proxied
    assert ctx.toxiproxy is not None
    spec = _fault(type="network.latency", latency_ms=400, jitter_ms=20)
    units = resolve(spec.target, spec.blast_radius, ctx.stack, seed=1, fault_name="slow")
    fault = build_fault("f1-slow", spec, units, ctx)

    await fault.apply()
    toxics = await ctx.toxiproxy.toxics("echo-1")
    assert [(t.name, t.type, t.attributes["latency"]) for t in toxics] == [
        ("chaos.f1-slow", "latency", 400)
    ]
    took, status = await timed_get(url)
    assert status == 200
    assert took >= 0.35

    await fault.rollback()
    assert await ctx.toxiproxy.toxics("echo-1") == []
    took, status = await timed_get(url)
    assert status == 200
    assert took < 0.35
    await fault.rollback()  # idempotent


async def test_down_disables_the_proxy_and_rollback_enables_it(
    proxied: tuple[FaultContext, str],
) -> None:
    ctx, url = proxied
    assert ctx.toxiproxy is not None
    spec = _fault(type="network.down")
    units = resolve(spec.target, "all", ctx.stack, seed=1, fault_name="cut")
    fault = build_fault("f2-cut", spec, units, ctx)
    await fault.apply()
    assert (await ctx.toxiproxy.proxies())["echo-1"] is False
    _, status = await timed_get(url, within=2)
    assert status != 200
    # Undo from the journal record alone, as `testbed chaos rollback` does after a crash.
    await fault_from_record(fault.record(), ctx).rollback()
    assert (await ctx.toxiproxy.proxies())["echo-1"] is True
    _, status = await timed_get(url)
    assert status == 200


@pytest.mark.parametrize(
    ("fields", "toxic_type", "attribute"),
    [
        ({"type": "network.timeout", "timeout_ms": 100}, "timeout", ("timeout", 100)),
        ({"type": "network.reset_peer", "timeout_ms": 0}, "reset_peer", ("timeout", 0)),
        ({"type": "network.bandwidth", "rate_kbps": 1}, "bandwidth", ("rate", 1)),
        (
            {"type": "network.slicer", "average_size": 1, "delay_us": 2000},
            "slicer",
            ("delay", 2000),
        ),
        ({"type": "network.limit_data", "bytes": 10}, "limit_data", ("bytes", 10)),
    ],
)
async def test_every_toxic_kind(
    proxied: tuple[FaultContext, str],
    fields: dict[str, object],
    toxic_type: str,
    attribute: tuple[str, int],
) -> None:
    ctx, url = proxied
    assert ctx.toxiproxy is not None
    spec = _fault(**fields)
    units = resolve(spec.target, "all", ctx.stack, seed=1, fault_name=toxic_type)
    fault = build_fault(f"f-{toxic_type}", spec, units, ctx)
    _, before = await timed_get(url + "?size=20000")
    assert before == 200
    await fault.apply()
    (toxic,) = await ctx.toxiproxy.toxics("echo-1")
    assert toxic.type == toxic_type
    assert toxic.attributes[attribute[0]] == attribute[1]
    if toxic_type in ("timeout", "reset_peer", "limit_data"):
        _, during = await timed_get(url + "?size=20000", within=2)
        assert during != 200
    await fault.rollback()
    assert await ctx.toxiproxy.toxics("echo-1") == []
    _, after = await timed_get(url + "?size=20000")
    assert after == 200


async def test_unreachable_toxiproxy_is_reported_quickly() -> None:
    client = ToxiproxyClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ToxiproxyError, match="not reachable"):
        await client.ping()
