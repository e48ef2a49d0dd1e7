"""The soak's 60-second form against a real stack: kills, freezes and cuts of every component
under checkouts with retries and duplicate keys, then convergence and the clients' view.

It fails on any violation the soak finds (a confirmed order the stores do not keep, a key with
two orders, a saga still pending past the bound, an instance left not ready, ...), and when
the nemesis did not really act (kills and freezes applied, every fault rolled back).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
from pathlib import Path

import pytest

from chaos.soak.run import SoakSettings, run_soak
from management.ports import port_is_free
from management.stack import down, up
from tests.support.processes import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SEED = 5
"""A schedule that kills orders, inventory and payments instances within 60 s."""
CONVERGE_WITHIN_S = 90.0
"""The bound held here: on a loaded, shared machine a killed process can take 30 s to start
again. The 30 s bound of the default settings is measured by ``testbed chaos soak`` (README)."""


@pytest.fixture
def base_port() -> int:
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(21000, 32000 - 400, 10)
        if all(port_is_free(p) for p in range(base, base + 400)):
            return base
    raise RuntimeError("no free port range found")


async def test_a_60_second_soak_ends_without_violation(
    tmp_path: Path, base_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (REPO_ROOT / "tools" / "bin" / "toxiproxy-server").exists() or not shutil.which(
        "prometheus"
    ):
        pytest.skip("needs toxiproxy-server and prometheus (make setup)")
    monkeypatch.setenv("TESTBED_STATE_DIR", str(tmp_path / "state"))
    stack = await up(run_dir=tmp_path / "run", base_port=base_port, jaeger=False)
    try:
        result = await run_soak(
            SoakSettings(seed=SEED, duration=60.0, converge_within=CONVERGE_WITHIN_S),
            run_dir=stack.run_dir,
            progress=print,
            handle_signals=False,
        )
    finally:
        await asyncio.to_thread(down, stack.run_dir)
    summary = result.summary
    assert result.error is None, result.error
    assert result.violations == [], "\n".join(result.violations[:20])
    assert result.exit_code == 0
    faults = summary["faults"]
    assert faults.get("kill", 0) >= 5, faults
    assert faults.get("freeze", 0) >= 3, faults
    assert {"orders", "inventory", "payments", "registry"} <= set(summary["faults_by_component"])
    assert summary["convergence_s"] is not None
    assert summary["convergence_s"] <= CONVERGE_WITHIN_S
    assert summary["clients"]["confirmed"] > 20, summary["clients"]
    checked = {c["name"]: c["checked"] for c in summary["checks"]}
    assert checked["confirmations_kept"] > 20
    assert checked["one_order_per_key"] == summary["clients"]["checkouts"]
    journal = json.loads(await asyncio.to_thread(result.journal_path.read_text))
    assert journal["verdict"] == "passed"
    assert {f["status"] for f in journal["faults"] if f["type"] != "process.kill"} <= {
        "rolled_back",
        "apply_failed",
    }
    assert result.report_path is not None
    assert "Nemesis soak" in await asyncio.to_thread(result.report_path.read_text)
