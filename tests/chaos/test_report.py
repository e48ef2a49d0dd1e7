"""The HTML report of a run: rendered from crafted journals (and Locust CSVs), well-formed,
with the fault windows where the faults were, and never an exception on a partial journal."""

from __future__ import annotations

import copy
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner

from chaos.cli import chaos
from chaos.faults.processes import SignalControl
from chaos.journal import Verdict
from chaos.loader import parse_experiment
from chaos.report import load_run, read_history, write_demo_index, write_report
from chaos.runner import Runner, RunResult
from chaos.stack import StackInfo

T0 = 1_700_000_000.0
HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,"
    "99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,"
    "Total Average Response Time,Total Min Response Time,Total Max Response Time,"
    "Total Average Content Size"
)
VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "source", "wbr"}


class _WellFormed(HTMLParser):
    """Every element closed in order (void elements and self-closing SVG tags aside)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:]} at {self.getpos()}")
            return
        self.stack.pop()


def parse(html: str) -> _WellFormed:
    parser = _WellFormed()
    parser.feed(html)
    parser.close()
    assert not parser.problems, parser.problems[:5]
    assert not parser.stack, f"unclosed: {parser.stack}"
    assert html.startswith("<!DOCTYPE html>")
    return parser


def write_history(folder: Path, *, seconds: int = 40, fail_from: int = 20) -> Path:
    """A Locust full-history CSV: 10 req/s, checkouts failing from ``fail_from``."""
    lines = [HEADER]
    requests = failures = 0
    checkout_req = checkout_fail = 0
    for s in range(seconds + 1):
        ts = int(T0) + s
        if s:
            requests += 10
            checkout_req += 2
            if s > fail_from:
                failures += 2
                checkout_fail += 2
        p99 = "N/A" if s == 0 else str(900 if s > fail_from else 120)
        pct = ",".join([p99] * 11)
        lines.append(f"{ts},8,,Aggregated,10.0,0.0,{pct},{requests},{failures},30,40.0,1,900,1000")
        lines.append(
            f"{ts},8,POST,checkout,2.0,0.0,{pct},{checkout_req},{checkout_fail},30,40.0,1,900,900"
        )
    path = folder / "locust_stats_history.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "locust_failures.csv").write_text(
        "Method,Name,Error,Occurrences,First Seen,Last Seen\n"
        "POST,checkout,\"CatchResponseError('checkout: <payments> unavailable')\",40,a,b\n",
        encoding="utf-8",
    )
    return path


def journal_data(folder: Path) -> dict[str, Any]:
    """A complete journal: load with a history, two faults, probes, audit, localisation."""
    return {
        "experiment": {
            "title": "Payments <slow> & checkout",
            "hypothesis": "Checkout stays fast while payments is slow.",
            "expect": "hold",
            "steady_state": [
                {
                    "name": "error-ratio",
                    "type": "locust",
                    "metric": "error_ratio",
                    "request": "Aggregated",
                    "over": "method",
                    "tolerance": {"max": 0.01},
                },
                {
                    "name": "checkout-p99",
                    "type": "locust",
                    "metric": "p99",
                    "request": "checkout",
                    "over": "method",
                    "tolerance": {"max": 2000},
                },
            ],
            "verify": [{"name": "audit", "type": "audit", "tolerance": {"equals": 0}}],
            "safeguards": [
                {
                    "name": "errors",
                    "probe": {
                        "type": "locust",
                        "metric": "error_ratio",
                        "request": "Aggregated",
                        "tolerance": {"max": 0.5},
                    },
                }
            ],
        },
        "source": "payments-latency",
        "started_at": T0,
        "ended_at": T0 + 42,
        "verdict": "failed",
        "reason": "deviated: error-ratio=0.1 (wanted <= 0.01)",
        "outcome": "deviated",
        "as_expected": False,
        "timeline": [
            {"phase": "preflight", "start": T0, "end": T0 + 0.1},
            {"phase": "warmup", "start": T0 + 0.1, "end": T0 + 6},
            {"phase": "method", "start": T0 + 6, "end": T0 + 36},
            {"phase": "settle", "start": T0 + 36, "end": T0 + 38},
            {"phase": "verify", "start": T0 + 41, "end": T0 + 42},
        ],
        "probes": [
            {
                "phase": "steady_state:after",
                "name": "error-ratio",
                "at": T0 + 38,
                "value": 0.1,
                "ok": False,
                "tolerance": "<= 0.01",
                "detail": "30/300 failed (Aggregated, method)",
            },
            {
                "phase": "verify:after",
                "name": "audit",
                "at": T0 + 41,
                "value": 0.0,
                "ok": True,
                "tolerance": "== 0.0",
                "detail": "no violation (stock_conserved 100, no_double_charge 32)",
            },
        ],
        "faults": [
            {
                "id": "1-slow",
                "type": "network.latency",
                "name": "slow",
                "target": "service payments",
                "blast_radius": "one",
                "units": [{"id": "payments-1"}],
                "status": "rolled_back",
                "planned_at": T0 + 9.9,
                "applied_at": T0 + 10,
                "rolled_back_at": T0 + 15,
                "error": None,
                "details": {},
            },
            {
                "id": "2-kill",
                "type": "process.kill",
                "name": "kill",
                "target": "service orders",
                "units": [{"id": "orders-1"}],
                "status": "rolled_back",
                "planned_at": T0 + 19.9,
                "applied_at": T0 + 20,
                "rolled_back_at": T0 + 30,
                "details": {"recovered_after_s": {"orders-1": 1.2}},
            },
        ],
        "safeguards": [],
        "load": {
            "plan": {"users": 8, "rate": None, "shape": "steady", "duration": 40},
            "summary": {
                "checkout": {"requests": 80, "failures": 40, "error_ratio": 0.5, "p99": 900},
                "Aggregated": {"requests": 400, "failures": 40, "error_ratio": 0.1, "p99": 900},
            },
            "reports": {
                "html": str(folder / "locust.html"),
                "history_csv": "/elsewhere/locust_stats_history.csv",
                "failures_csv": "/elsewhere/locust_failures.csv",
            },
            "method": {"requests": 300, "failures": 30, "error_ratio": 0.1, "p99_ms": 900.0},
        },
        "events": [{"at": T0 + 10, "kind": "note", "text": "applying network.latency"}],
        "localization": {
            "faults": [
                {
                    "fault_id": "2-kill",
                    "type": "process.kill",
                    "truth": {
                        "target": "service orders",
                        "instances": ["orders-1"],
                        "services": ["orders"],
                        "links": [],
                    },
                    "status": "located",
                    "located": "no (#2)",
                    "rank": 2,
                    "score": 0.5,
                    "reason": "orders-1 ranked second",
                    "spans": {"baseline": 120, "fault": 80},
                    "suspects": [
                        {
                            "component": "payments-1",
                            "service": "payments",
                            "where": "network",
                            "score": 9.5,
                            "evidence": ["12/40 calls slow on the wire [9.5]"],
                        },
                        {
                            "component": "orders-1",
                            "service": "orders",
                            "where": "network",
                            "score": 4.25,
                            "evidence": ["8/30 calls got no answer [4.2]"],
                        },
                    ],
                }
            ],
            "headline": "no (#2)",
            "score": 0.5,
        },
    }


def write_journal(folder: Path, data: dict[str, Any], *, history: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if history:
        write_history(folder)
    path = folder / "journal.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def fault_windows(html: str) -> list[tuple[float, float]]:
    """(x, width) of the timeline's fault windows (the big chart, not sparklines)."""
    svg = html[html.index('<svg class="chart"') :]
    svg = svg[: svg.index("</svg>")]
    return [
        (float(m.group(1)), float(m.group(2)))
        for m in re.finditer(
            r'<rect class="fault-window" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', svg
        )
    ]


def test_full_journal_renders_every_section(tmp_path: Path) -> None:
    journal = write_journal(tmp_path / "run", journal_data(tmp_path / "run"))
    out = write_report(journal)
    assert out == journal.with_name("report.html")
    html = out.read_text(encoding="utf-8")
    parser = parse(html)
    assert "Payments &lt;slow&gt; &amp; checkout" in html  # escaped, never raw
    assert "<slow>" not in html
    assert 'class="badge failed">failed<' in html
    assert "deviated: error-ratio=0.1" in html
    assert "Checkout stays fast while payments is slow." in html
    # the history next to the journal is used although the journal names another folder
    assert "requests per second" in html
    assert "Locust&#x27;s history" not in html
    assert "checkout p99" in html  # a probe's own request gets its own line
    assert "What failed for users" in html
    assert "&lt;payments&gt; unavailable" in html
    assert "No violation" in html
    assert "stock conserved" in html
    assert "Where was the fault?" in html
    assert "no (#2)" in html
    assert "the fault</span>" in html  # the truth is marked among the suspects
    assert "orders-1 back after 1.2 s" in html
    svgs = [attrs for tag, attrs in parser.tags if tag == "svg"]
    assert svgs
    assert all(a.get("xmlns") == "http://www.w3.org/2000/svg" for a in svgs)
    assert not [t for t, _ in parser.tags if t in ("script", "link")], "self-contained"


def test_fault_windows_sit_where_the_faults_were(tmp_path: Path) -> None:
    journal = write_journal(tmp_path / "run", journal_data(tmp_path / "run"))
    html = write_report(journal).read_text(encoding="utf-8")
    (x1, w1), (x2, w2) = fault_windows(html)
    assert x1 < x2
    assert w2 == pytest.approx(2 * w1, rel=0.02)  # 10 s against 5 s
    assert x2 - x1 == pytest.approx(2 * w1, rel=0.02)  # applied 10 s apart
    assert "slow: network.latency on payments-1" in html
    assert "kill: process.kill on orders-1" in html


def test_history_series_error_ratio_and_rates(tmp_path: Path) -> None:
    tracks = read_history(write_history(tmp_path, seconds=30, fail_from=20))
    agg = tracks["Aggregated"]
    rates = agg.rates()
    assert rates[0][2:] == (10.0, 0.0)
    assert rates[-1][2:] == (8.0, 2.0)
    ratios = dict(agg.error_ratio(5.0))
    assert ratios[T0 + 10] == 0.0
    assert ratios[T0 + 30] == pytest.approx(0.2)
    assert ratios[T0] is None  # no request yet
    assert dict(tracks["checkout"].percentile("99%"))[T0 + 25] == 900


def test_no_localization_section_when_the_journal_has_none(tmp_path: Path) -> None:
    data = journal_data(tmp_path / "run")
    del data["localization"]
    html = write_report(write_journal(tmp_path / "run", data)).read_text(encoding="utf-8")
    parse(html)
    assert "Where was the fault?" not in html
    data["localization"] = None  # as the journal writes it before localisation ran
    html = write_report(write_journal(tmp_path / "run", data)).read_text(encoding="utf-8")
    assert "Where was the fault?" not in html
    data["localization"] = {"error": "ValueError: no spans", "headline": "error"}
    html = write_report(write_journal(tmp_path / "run", data)).read_text(encoding="utf-8")
    assert "Localisation failed: ValueError: no spans" in html


def test_aborted_run_shows_the_safeguard_trip(tmp_path: Path) -> None:
    data = journal_data(tmp_path / "run")
    data.update(verdict="aborted", reason="safeguard errors: 0.6 outside <= 0.5 for 10.0s")
    data["safeguards"] = [
        {"name": "errors", "value": 0.6, "tolerance": "<= 0.5", "tripped_at": T0 + 33}
    ]
    html = write_report(write_journal(tmp_path / "run", data)).read_text(encoding="utf-8")
    parse(html)
    assert 'class="badge aborted">aborted<' in html
    assert "safeguard errors tripped" in html
    assert 'stroke="#b3142b" stroke-width="2" stroke-dasharray="6 3"' in html  # the marker


def test_no_load_still_draws_the_fault_windows(tmp_path: Path) -> None:
    data = journal_data(tmp_path / "run")
    data["load"] = None
    data["verdict"], data["as_expected"] = "passed", True
    html = write_report(write_journal(tmp_path / "run", data, history=False)).read_text(
        encoding="utf-8"
    )
    parse(html)
    assert len(fault_windows(html)) == 2
    assert "no load ran in this experiment" in html
    assert "requests per second" not in html
    assert 'class="badge passed">passed<' in html


def test_missing_history_file_is_said_not_raised(tmp_path: Path) -> None:
    data = journal_data(tmp_path / "run")
    html = write_report(write_journal(tmp_path / "run", data, history=False)).read_text(
        encoding="utf-8"
    )
    parse(html)
    assert "history is empty or missing" in html


@pytest.mark.parametrize(
    ("verdict", "expect", "badge"),
    [
        ("failed", "deviate", "drawback shown"),
        ("passed", "deviate", "drawback not shown"),
        ("error", "hold", "error"),
        (None, "hold", "unfinished"),
    ],
)
def test_verdict_badges(tmp_path: Path, verdict: str | None, expect: str, badge: str) -> None:
    data = journal_data(tmp_path / "run")
    data["verdict"] = verdict
    data["experiment"]["expect"] = expect
    html = write_report(write_journal(tmp_path / "run", data)).read_text(encoding="utf-8")
    assert f'">{badge}</span>' in html


def _mangled(full: dict[str, Any]) -> list[dict[str, Any]]:
    """The full journal with each part missing, emptied or of the wrong type."""
    out: list[dict[str, Any]] = [{}, {"faults": []}, {"verdict": 3, "experiment": "x"}]
    for key in full:
        bad: object
        for bad in (None, "x", 1, [], {}, [None, 1, "x"]):
            data = copy.deepcopy(full)
            if bad is None:
                del data[key]
            else:
                data[key] = bad
            out.append(data)
    for section in ("probes", "faults", "timeline", "events"):
        for field in {k for entry in full.get(section) or [] for k in entry}:
            data = copy.deepcopy(full)
            for entry in data[section]:
                entry[field] = "garbage"
            out.append(data)
    data = copy.deepcopy(full)
    data["load"]["summary"] = {"Aggregated": {"requests": "many", "p99": None}}
    data["load"]["method"] = {"error_ratio": "high"}
    data["localization"]["faults"][0]["suspects"] = [None, {"score": "NaN"}, 5]
    data["localization"]["faults"][0]["truth"] = 7
    out.append(data)
    return out


def test_never_raises_on_a_journal_with_missing_or_odd_fields(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    full = journal_data(folder)
    full["load"]["reports"]["history_csv"] = str(write_history(folder))
    for i, data in enumerate(_mangled(full)):
        journal = folder / f"j{i}" / "journal.json"
        journal.parent.mkdir()
        journal.write_text(json.dumps(data), encoding="utf-8")
        parse(write_report(journal).read_text(encoding="utf-8"))


def test_unreadable_journal_raises_a_value_error(tmp_path: Path) -> None:
    journal = tmp_path / "journal.json"
    journal.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="Expecting property name"):  # JSONDecodeError
        write_report(journal)


def _result(journal: Path, verdict: Verdict, as_expected: bool) -> RunResult:
    run = load_run(journal)
    return RunResult(
        title=run.title,
        verdict=verdict,
        reason=run.reason or None,
        outcome=run.outcome,
        as_expected=as_expected,
        journal_path=journal,
        error_ratio=0.1,
        p99_ms=900.0,
        audit="pass",
    )


def test_demo_index_links_each_report(tmp_path: Path) -> None:
    first = write_journal(tmp_path / "stack-1" / "chaos" / "a", journal_data(tmp_path))
    second_data = journal_data(tmp_path)
    second_data["experiment"]["title"] = "Second"
    second = write_journal(tmp_path / "stack-2" / "chaos" / "b", second_data)
    write_report(first)  # the second report is rendered by the index itself
    results = [_result(first, Verdict.FAILED, False), _result(second, Verdict.PASSED, True)]
    index = write_demo_index(tmp_path, results)
    assert index == tmp_path / "demo.html"
    html = index.read_text(encoding="utf-8")
    parser = parse(html)
    hrefs = [a.get("href") for tag, a in parser.tags if tag == "a"]
    assert hrefs == ["stack-1/chaos/a/report.html", "stack-2/chaos/b/report.html"]
    assert (second.parent / "report.html").exists()
    assert "1/2" in html  # ended as expected
    assert html.count('class="spark"') == 2
    assert 'class="fault-window"' in html


def test_cli_report_renders_and_rejects(tmp_path: Path) -> None:
    journal = write_journal(tmp_path / "run", journal_data(tmp_path / "run"))
    result = CliRunner().invoke(chaos, ["report", str(journal.parent)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(journal.with_name("report.html"))
    journal.write_text("[", encoding="utf-8")
    result = CliRunner().invoke(chaos, ["report", str(journal)])
    assert result.exit_code == 2
    assert "cannot render a report" in result.output


async def test_runner_writes_the_report_at_the_end(upstream: str, tmp_path: Path) -> None:
    experiment = parse_experiment(
        """
title: echo answers
hypothesis: echo answers before and after a pause
steady_state:
  - {name: echo-up, type: http, url: "{echo}/", tolerance: {equals: 200}}
method:
  - pause: 0.1s
"""
    )
    stack = StackInfo(run_dir=tmp_path / "run", urls={"echo": f"http://{upstream}"})
    runner = Runner(
        experiment,
        stack,
        processes=SignalControl(),
        out_dir=tmp_path / "exp",
        handle_signals=False,
    )
    result = await runner.run()
    assert result.verdict is Verdict.PASSED
    assert result.report_path == tmp_path / "exp" / "report.html"
    html = result.report_path.read_text(encoding="utf-8")
    parse(html)
    assert "echo answers" in html
    assert "echo-up" in html


def test_detection_section_shows_the_first_alert_and_the_times(tmp_path: Path) -> None:
    data = journal_data(tmp_path / "run")
    html = write_report(write_journal(tmp_path / "run", data)).read_text(encoding="utf-8")
    assert "When did an alert fire?" not in html  # no section in the journal: none shown
    fired = {"service": "orders", "instance": "orders-1", "severity": "page"}
    data["detection"] = {
        "faults": [
            {"fault": "2-kill", "detected": True, "alert": "InstanceDown", "labels": fired,
             "fired_at": T0 + 12.0, "ttd_s": 1.4, "recovered_at": T0 + 20.0, "ttr_s": 9.4},
            {"fault": "3-<slow>", "detected": False, "alert": None, "labels": None,
             "fired_at": None, "ttd_s": None, "recovered_at": None, "ttr_s": None},
        ],
        "alerts": [{"name": "InstanceDown", "labels": fired, "fired_at": T0 + 12.0,
                    "resolved_at": None}],
        "headline": "1/2 (median 1.4 s)",
    }  # fmt: skip
    html = write_report(write_journal(tmp_path / "run", data)).read_text(encoding="utf-8")
    parse(html)
    assert "When did an alert fire?" in html
    assert "1/2 (median 1.4 s)" in html
    assert "instance=orders-1, service=orders, severity=page" in html
    assert "1.4 s" in html
    assert "9.4 s" in html
    assert "3-&lt;slow&gt;" in html  # escaped
    assert "not detected" in html
    assert "firing" in html
    data["detection"] = {"error": "cannot read alerts from Prometheus", "headline": "error"}
    html = write_report(write_journal(tmp_path / "run", data)).read_text(encoding="utf-8")
    assert "Alerts could not be read: cannot read alerts from Prometheus" in html


def test_each_fault_links_to_its_traces_in_the_trace_ui(tmp_path: Path) -> None:
    data = journal_data(tmp_path / "run")
    data["stack"] = {"trace_ui": "http://127.0.0.1:20006"}
    html = write_report(write_journal(tmp_path / "run", data)).read_text(encoding="utf-8")
    links = [a["href"] for tag, a in parse(html).tags if tag == "a" and a.get("class") == "traces"]
    assert len(links) == 2
    slow, kill = (parse_qs(urlsplit(link or "").query) for link in links)
    assert (links[0] or "").startswith("http://127.0.0.1:20006/zipkin/?")
    assert slow["serviceName"] == ["payments"]
    assert kill["serviceName"] == ["orders"]
    # the fault's window, with a margin either side, in milliseconds
    assert int(slow["startTs"][0]) == int((T0 + 10 - 2) * 1000)
    assert int(slow["endTs"][0]) == int((T0 + 15 + 2) * 1000)
    assert slow["lookback"] == ["range"]
    # no trace UI recorded (an older journal, or --no-trace-ui): no column
    del data["stack"]
    html = write_report(write_journal(tmp_path / "run", data)).read_text(encoding="utf-8")
    assert 'class="traces"' not in html
    assert "<th>traces</th>" not in html


CANARY = {
    "service": "payments",
    "version": "v3",
    "instance": "payments-canary",
    "share_asked": 0.25,
    "share_observed": 0.216,
    "decision": "rollback",
    "reasons": ["error ratio 57.14% vs 0.00%: more than 2.00% worse"],
    "action": "rolled back",
    "versions": {
        "v1": {"requests": 79.0, "errors": 0, "error_ratio": 0.0, "p99_ms": 193.0},
        "v3": {"requests": 22.4, "errors": 12.8, "error_ratio": 0.5714, "p99_ms": 218.0},
    },
    "start_s": 1.19,
    "judged_s": 26.59,
    "rollback_s": 1.26,
    "deploy_s": None,
}


def test_a_canary_shows_its_verdict_and_numbers_per_version(tmp_path: Path) -> None:
    data = journal_data(tmp_path / "run")
    assert "<h2>Canary" not in write_report(write_journal(tmp_path / "run", data)).read_text()
    data["canaries"] = [CANARY]
    html = write_report(write_journal(tmp_path / "run", data)).read_text(encoding="utf-8")
    parse(html)
    assert "payments v3 (payments-canary)" in html
    assert '<td>v3</td><td class="num">22</td><td class="num">57.1%</td>' in html
    assert "canary share 21.6% (asked 25.0%)" in html
    assert "rolled back in 1.3 s" in html
    for odd in ("x", [None, 1], [{"versions": "x", "reasons": 3, "share_observed": "lots"}]):
        data["canaries"] = odd
        parse(write_report(write_journal(tmp_path / "run", data)).read_text(encoding="utf-8"))
