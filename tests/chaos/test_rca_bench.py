"""``testbed chaos rca-bench --quick`` for real: one fresh stack, four cases, blind, scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from chaos.rcabench import QUICK, SMOKE, bench_cases, run_bench
from tests.support.processes import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


async def test_quick_bench_runs_localises_blind_and_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (REPO_ROOT / "tools" / "bin" / "toxiproxy-server").exists() or not shutil.which(
        "prometheus"
    ):
        pytest.skip("needs toxiproxy-server and prometheus (make setup)")
    monkeypatch.setenv("TESTBED_STATE_DIR", str(tmp_path / "state"))
    lines: list[str] = []
    out = await run_bench(
        tmp_path / "bench",
        bench_cases(quick=True),
        seed=3,
        progress=lines.append,
        timing=SMOKE,
    )

    assert [r["case"] for r in out["cases"]] == list(QUICK)
    assert sum(line.startswith("[") for line in lines) == len(QUICK)  # a line per case
    saved = json.loads((tmp_path / "bench" / "rca-bench.json").read_text())
    assert saved["summary"] == out["summary"]
    overall = out["summary"]["overall"]
    assert overall["cases"] == len(QUICK)
    for row in out["cases"]:
        # Blind, with the window-given verdict kept beside it. A case whose telemetry shows no
        # anomaly has no window and counts as a miss (undetermined), never as a hit.
        assert row["window_given"] is not None
        if row["blind"]["window"] is None:
            assert row["rank"] != 1, row
    assert sum(row["blind"]["window"] is not None for row in out["cases"]) >= len(QUICK) - 1
    # The experiment's own journal and report carry the blind result beside the window-given.
    journal = json.loads(
        (tmp_path / "bench" / "stack-quick" / "experiment" / "journal.json").read_text()
    )
    assert len(journal["blind_localization"]["faults"]) == len(QUICK) + 1  # with the decoy
    assert "localization" in journal
    report = (tmp_path / "bench" / "stack-quick" / "experiment" / "report.html").read_text()
    assert "Blind:" in report
    assert (tmp_path / "bench" / "stack-quick" / "metrics.json").exists()
    # Loose (four cases on a shared two-core machine: accuracy is the full bench's to
    # measure), but a localiser that finds nothing, or ranks at random, fails it.
    assert overall["ac3"] >= 0.5, json.dumps(out["cases"], indent=1)[:4000]
