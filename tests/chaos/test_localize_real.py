"""Localisation for real: echo processes writing span files, a real Toxiproxy, the runner.

``front`` (service ``front``) calls ``Echo`` on two ``echo`` instances, each behind its own
Toxiproxy proxy, as the embedded stack runs services. The runner adds latency on one proxy
while the test sends traffic; at the end it reads the span files and must name that instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import aiohttp

from chaos.faults.processes import SignalControl
from chaos.faults.toxiproxy import ToxiproxyClient
from chaos.loader import parse_experiment
from chaos.runner import Runner
from chaos.stack import InstanceInfo, StackInfo
from tests.support.processes import Spawner, free_port

EXPERIMENT = """
title: one echo instance gets slow
hypothesis: the traces say which one
seed: 5
method:
  - pause: 3s
  - fault: {name: slow-echo, type: network.latency, target: {service: echo},
            blast_radius: one, duration: 4s, latency_ms: 150}
settle: 0.2s
"""


async def _traffic(url: str, stop: asyncio.Event) -> int:
    sent = 0
    body = {"method": "Echo", "text": "hi"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.post(
                    f"{url}/testbed.echo.v1.EchoService/Chain", json=body
                ) as resp:
                    await resp.read()
            sent += 1
            await asyncio.sleep(0.04)
    return sent


async def test_runner_locates_latency_on_one_hop_from_real_spans(
    spawner: Spawner, toxiproxy_url: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"  # the spawner's TESTBED_RUN_DIR: span files go to run/traces
    toxiproxy = ToxiproxyClient(toxiproxy_url)
    backs, instances, listens = [], [], []
    for i in (1, 2):
        back = spawner.start("tests.support.echo", name=f"echo-{i}")
        listen = f"127.0.0.1:{free_port()}"
        await toxiproxy.create_proxy(f"echo-{i}", upstream=back.address, listen=listen)
        backs.append(back)
        listens.append(listen)
        instances.append(
            InstanceInfo(service="echo", instance_id=f"echo-{i}", address=listen, proxy=f"echo-{i}")
        )
    front = spawner.start(
        "tests.support.echo",
        name="front-1",
        env={
            "TESTBED_SERVICE": "front",
            "TESTBED_UPSTREAMS": "echo=" + ",".join(listens),
            "TESTBED_RESILIENCE": "basic",
        },
    )
    for proc in (*backs, front):
        await proc.wait_ready()
    stack = StackInfo(run_dir=run_dir, instances=tuple(instances), toxiproxy_url=toxiproxy_url)
    runner = Runner(
        parse_experiment(EXPERIMENT),
        stack,
        processes=SignalControl(),
        out_dir=tmp_path / "exp",
        handle_signals=False,
    )
    stop = asyncio.Event()
    sender = asyncio.create_task(_traffic(front.url, stop))

    def on_update(live: object) -> None:
        if runner.live.phase in ("settle", "localize"):
            stop.set()  # quiet span files make the runner's flush wait short

    runner.on_update = on_update
    started = time.monotonic()
    result = await runner.run()
    stop.set()
    sent = await sender
    assert sent > 50

    journal = json.loads(result.journal_path.read_text())
    section = journal["localization"]
    (fault,) = section["faults"]
    slowed = fault["truth"]["instances"]
    assert len(slowed) == 1
    assert fault["status"] == "located", json.dumps(fault, indent=2)
    top = fault["suspects"][0]
    assert top["component"] == slowed[0]
    assert top["where"] == "network"
    assert result.located == "yes (#1)"
    assert any(p["phase"] == "localize" for p in journal["timeline"])
    assert time.monotonic() - started < 30
