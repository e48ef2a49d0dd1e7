"""The runner against real Toxiproxy and a small real app: journal, safeguards, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from chaos.faults.processes import SignalControl
from chaos.faults.toxiproxy import ToxiproxyClient
from chaos.journal import Verdict
from chaos.loader import parse_experiment
from chaos.runner import Runner
from chaos.stack import InstanceInfo, StackInfo
from tests.support.processes import REPO_ROOT, free_port


@pytest.fixture
async def stack(toxiproxy_url: str, upstream: str, tmp_path: Path) -> StackInfo:
    """Two instances of service ``echo`` (each behind its own proxy) in front of one app."""
    client = ToxiproxyClient(toxiproxy_url)
    instances = []
    for i in (1, 2):
        listen = f"127.0.0.1:{free_port()}"
        await client.create_proxy(f"echo-{i}", upstream=upstream, listen=listen)
        instances.append(
            InstanceInfo(service="echo", instance_id=f"echo-{i}", address=listen, proxy=f"echo-{i}")
        )
    return StackInfo(
        run_dir=tmp_path / "run",
        instances=tuple(instances),
        toxiproxy_url=toxiproxy_url,
        urls={f"echo{i + 1}": f"http://{inst.address}" for i, inst in enumerate(instances)},
    )


async def _toxics(stack: StackInfo) -> dict[str, list[str]]:
    assert stack.toxiproxy_url
    client = ToxiproxyClient(stack.toxiproxy_url)
    return {p: [t.name for t in await client.toxics(p)] for p in ("echo-1", "echo-2")}


LATENCY = """
title: echo gets slow
hypothesis: echo still answers
seed: 3
steady_state:
  - {name: echo1-up, type: http, url: "{echo1}/", tolerance: {equals: 200}}
method:
  - pause: 0.2s
  - parallel:
    - fault: {name: slow, type: network.latency, target: {service: echo}, blast_radius: one,
              duration: 1s, latency_ms: 200}
    - sequence:
      - pause: 0.3s
      - fault: {name: cut, type: network.down, target: {instance: echo-2}, duration: 0.5s}
verify:
  - {name: echo2-up, type: http, url: "{echo2}/", tolerance: {equals: 200}}
"""


async def test_journal_records_phases_probes_faults_and_verdict(
    stack: StackInfo, tmp_path: Path
) -> None:
    out = tmp_path / "exp"
    runner = Runner(
        parse_experiment(LATENCY),
        stack,
        processes=SignalControl(),
        out_dir=out,
        handle_signals=False,
    )
    result = await runner.run()
    assert result.verdict is Verdict.PASSED, result.reason
    assert result.exit_code == 0
    journal = json.loads((out / "journal.json").read_text())
    phases = [p["phase"] for p in journal["timeline"]]
    assert phases == [
        "preflight",
        "steady-state-before",
        "method",
        "settle",
        "steady-state-after",
        "verify",
    ]
    assert all(p["end"] >= p["start"] for p in journal["timeline"])
    faults = {f["name"]: f for f in journal["faults"]}
    assert set(faults) == {"slow", "cut"}
    for f in faults.values():
        assert f["status"] == "rolled_back"
        assert f["planned_at"] <= f["applied_at"] <= f["rolled_back_at"]
    assert faults["slow"]["rolled_back_at"] - faults["slow"]["applied_at"] >= 0.9
    # blast radius 'one' of two instances, reproducibly from the seed
    assert len(faults["slow"]["units"]) == 1
    assert faults["cut"]["units"][0]["proxy"] == "echo-2"
    probes = [(p["phase"], p["name"], p["value"], p["ok"]) for p in journal["probes"]]
    assert probes == [
        ("steady_state:before", "echo1-up", 200, True),
        ("steady_state:after", "echo1-up", 200, True),
        ("verify:after", "echo2-up", 200, True),
    ]
    assert journal["verdict"] == "passed"
    assert journal["outcome"] == "hypothesis held"
    assert await _toxics(stack) == {"echo-1": [], "echo-2": []}


DESTRUCTIVE = """
title: cut every echo
hypothesis: nobody notices
method:
  - fault: {type: network.down, target: {service: echo}, duration: 60s}
safeguards:
  - name: echo1-answers
    probe: {type: http, url: "{echo1}/", timeout: 1s, tolerance: {equals: 200}}
    for: 1s
    every: 0.3s
"""


async def test_a_safeguard_aborts_a_destructive_experiment(
    stack: StackInfo, tmp_path: Path
) -> None:
    started = time.monotonic()
    runner = Runner(
        parse_experiment(DESTRUCTIVE),
        stack,
        processes=SignalControl(),
        out_dir=tmp_path / "exp",
        handle_signals=False,
    )
    result = await runner.run()
    assert result.verdict is Verdict.ABORTED
    assert result.exit_code == 2
    assert result.reason is not None
    assert "safeguard echo1-answers" in result.reason
    assert time.monotonic() - started < 30  # not the fault's 60 s
    journal = json.loads((tmp_path / "exp" / "journal.json").read_text())
    assert journal["safeguards"][0]["name"] == "echo1-answers"
    assert journal["faults"][0]["status"] == "rolled_back"
    assert stack.toxiproxy_url
    proxies = await ToxiproxyClient(stack.toxiproxy_url).proxies()
    assert proxies == {"echo-1": True, "echo-2": True}


async def test_steady_state_not_met_before_aborts_without_touching_anything(
    stack: StackInfo, tmp_path: Path
) -> None:
    text = LATENCY.replace("tolerance: {equals: 200}}\nmethod", "tolerance: {equals: 201}}\nmethod")
    runner = Runner(
        parse_experiment(text),
        stack,
        processes=SignalControl(),
        out_dir=tmp_path / "exp",
        handle_signals=False,
    )
    result = await runner.run()
    assert result.verdict is Verdict.ABORTED
    assert result.reason is not None
    assert "steady state not met" in result.reason
    journal = json.loads((tmp_path / "exp" / "journal.json").read_text())
    assert journal["faults"] == []


async def test_a_stack_that_does_not_fit_is_refused_before_anything(
    stack: StackInfo, tmp_path: Path
) -> None:
    text = LATENCY.replace("seed: 3", "seed: 3\nrequires: {instances: {echo: 3}}")
    runner = Runner(
        parse_experiment(text),
        stack,
        processes=SignalControl(),
        out_dir=tmp_path / "exp",
        handle_signals=False,
    )
    result = await runner.run()
    assert result.verdict is Verdict.ABORTED
    assert result.reason is not None
    assert "echo has 2 instances, needs 3" in result.reason
    assert json.loads((tmp_path / "exp" / "journal.json").read_text())["faults"] == []


SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from chaos.faults.processes import SignalControl
from chaos.loader import parse_experiment
from chaos.runner import Runner
from chaos.stack import InstanceInfo, StackInfo

cfg = json.loads(sys.argv[1])
stack = StackInfo(
    run_dir=Path(cfg["run_dir"]),
    instances=tuple(InstanceInfo(**i) for i in cfg["instances"]),
    toxiproxy_url=cfg["toxiproxy"],
)
exp = parse_experiment(cfg["experiment"])
result = asyncio.run(
    Runner(exp, stack, processes=SignalControl(), out_dir=Path(cfg["out"])).run()
)
print(result.verdict.value, result.reason, flush=True)
sys.exit(result.exit_code)
"""

LONG_FAULTS = """
title: long faults
hypothesis: rolled back on Ctrl-C
method:
  - parallel:
    - fault: {name: slow, type: network.latency, target: {service: echo}, duration: 120s,
              latency_ms: 500}
    - fault: {name: cut, type: network.down, target: {instance: echo-2}, duration: 120s}
"""


async def test_ctrl_c_mid_fault_leaves_toxiproxy_clean(stack: StackInfo, tmp_path: Path) -> None:
    out = tmp_path / "exp"
    cfg: dict[str, Any] = {
        "run_dir": str(stack.run_dir),
        "instances": [
            {
                "service": i.service,
                "instance_id": i.instance_id,
                "address": i.address,
                "proxy": i.proxy,
            }
            for i in stack.instances
        ],
        "toxiproxy": stack.toxiproxy_url,
        "experiment": LONG_FAULTS,
        "out": str(out),
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 - a child we signal directly, briefly
        [sys.executable, "-c", SCRIPT, json.dumps(cfg)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        deadline = time.monotonic() + 30
        applied = False
        while time.monotonic() < deadline and not applied:
            await asyncio.sleep(0.1)
            try:
                journal = json.loads((out / "journal.json").read_text())
            except (FileNotFoundError, ValueError):
                continue
            applied = sum(f["status"] == "applied" for f in journal["faults"]) == 2
        assert applied, "the faults were never applied"
        toxics = await _toxics(stack)
        assert toxics["echo-1"] == ["chaos.1-slow"]
        assert stack.toxiproxy_url
        assert (await ToxiproxyClient(stack.toxiproxy_url).proxies())["echo-2"] is False

        proc.send_signal(signal.SIGINT)
        output, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, output
    assert b"aborted interrupted (SIGINT)" in output
    assert await _toxics(stack) == {"echo-1": [], "echo-2": []}
    assert (await ToxiproxyClient(stack.toxiproxy_url).proxies())["echo-2"] is True
    journal = json.loads((out / "journal.json").read_text())
    assert journal["verdict"] == "aborted"
    assert {f["status"] for f in journal["faults"]} == {"rolled_back"}
