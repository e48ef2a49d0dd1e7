"""The blind result in an experiment's journal and report, beside the window-given one."""

from __future__ import annotations

from pathlib import Path

from chaos.blind import blind_section
from chaos.report import write_report
from tests.chaos.test_blind import FAULT_FROM, RUN_S, T0, Fault, traffic
from tests.chaos.test_report import journal_data, write_journal


def _journal() -> dict[str, object]:
    unit = {"id": "payments-1", "proxy": "payments-1",
            "instance": {"instance_id": "payments-1", "service": "payments"}}  # fmt: skip
    return {
        "timeline": [{"phase": "method", "start": T0 + 10.0, "end": T0 + RUN_S - 3.0}],
        "faults": [
            {
                "id": "1-slow",
                "type": "service.latency",
                "target": "service payments",
                "units": [unit],
                "applied_at": T0 + FAULT_FROM,
            }
        ],
    }


def test_blind_section_scores_the_blind_ranking_against_the_journal() -> None:
    section = blind_section(_journal(), traffic(Fault(self_ms={"payments-1": 300})))
    assert section is not None
    (fault,) = section["faults"]
    assert fault["located"] == "yes (#1)"
    assert fault["suspects"][0]["component"] == "payments-1"
    assert "anomaly window found" in fault["reason"]
    # The telemetry handed over is the method's frame: it starts before the fault.
    assert section["frame"]["start"] < T0 + FAULT_FROM


def test_no_fault_in_the_spans_is_undetermined_and_a_miss() -> None:
    section = blind_section(_journal(), traffic(None))
    assert section is not None
    assert section["faults"][0]["located"] == "undetermined"
    assert section["faults"][0]["rank"] is None


def test_report_shows_blind_and_window_given_labelled(tmp_path: Path) -> None:
    data = journal_data(tmp_path / "run")
    data["blind_localization"] = blind_section(
        _journal(), traffic(Fault(self_ms={"payments-1": 300}))
    )
    html = write_report(write_journal(tmp_path / "run", data)).read_text("utf-8")
    assert "Blind: from the run&#39;s traces alone" in html
    assert "Window given: the journal&#39;s fault times" in html
    assert html.index("Blind:") < html.index("Window given:")
