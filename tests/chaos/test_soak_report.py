"""The soak's report renders from a journal, escapes what it shows, and survives a crashed
run's journal that lacks most fields."""

from __future__ import annotations

import json
from pathlib import Path

from chaos.soak.report import render_soak_report, write_soak_report


def journal() -> dict[str, object]:
    return {
        "experiment": {"title": "Nemesis soak, seed 3", "hypothesis": "it holds", "settings": {}},
        "source": "soak",
        "verdict": "failed",
        "reason": "1 violation(s): <script>",
        "started_at": 1000.0,
        "ended_at": 1300.0,
        "timeline": [
            {"phase": "storm", "start": 1000.0, "end": 1180.0},
            {"phase": "converge", "start": 1180.0, "end": 1200.0},
        ],
        "faults": [
            {
                "id": "soak1",
                "type": "process.kill",
                "units": [{"id": "orders-1"}],
                "status": "rolled_back",
                "applied_at": 1010.0,
                "rolled_back_at": 1013.0,
                "details": {"recovered_after_s": {"orders-1": 2.5}},
                "soak": {"kind": "kill"},
            }
        ],
        "soak": {
            "seed": 3,
            "duration_s": 180,
            "violation_count": 1,
            "violations": ["confirmations_kept: order o-1: <b>lost</b>"],
            "convergence_s": 12.5,
            "convergence_bound_s": 30,
            "clients": {"checkouts": 10, "confirmed": 7, "failed": 3},
            "faults": {"kill": 1},
            "faults_by_component": {"orders": {"kill": 1}},
            "samples": [
                {"at": 1181.0, "not_ready": ["orders-1"], "pending_orders": 4},
                {"at": 1192.5, "not_ready": [], "pending_orders": 0},
            ],
            "checks": [
                {
                    "name": "confirmations_kept",
                    "title": "kept",
                    "checked": 7,
                    "violation_count": 1,
                    "violations": [{"subject": "order o-1", "message": "<b>lost</b>"}],
                }
            ],
            "missing_confirmations": 1,
            "not_ready": [],
        },
    }


def test_the_report_shows_the_figures_and_escapes_them() -> None:
    html = render_soak_report(journal())
    assert "Nemesis soak, seed 3" in html
    assert "12.5 s" in html
    assert "confirmations_kept" in html
    assert "orders-1: 2.5 s" in html
    assert "&lt;b&gt;lost&lt;/b&gt;" in html
    assert "<b>lost</b>" not in html
    assert "&lt;script&gt;" in html
    assert "<svg" in html, "the convergence chart"


def test_a_crashed_runs_journal_still_renders(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    path.write_text(json.dumps({"experiment": {}, "faults": [], "timeline": []}))
    out = write_soak_report(path)
    assert "not recorded" in out.read_text()
