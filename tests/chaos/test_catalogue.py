"""The shipped catalogue (every experiment valid, tagged, all claims covered), the rule that an
expected deviation is named, and the pieces of ``chaos compare`` that need no stack."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from chaos.compare import (
    Metrics,
    Probe,
    Variant,
    difference_sentence,
    metrics_of,
    parse_variant,
    probe_rows,
    variant_experiment,
    variant_topology,
)
from chaos.demo import fit_load, method_seconds, topology_for
from chaos.execute import shipped_experiments
from chaos.journal import Verdict
from chaos.loader import ExperimentError, parse_experiment
from chaos.model import CLAIMS, PARTS, DeployStep
from chaos.pages import write_compare_report, write_suite_index
from chaos.runner import expected_outcome
from management.cli import cli
from management.topology import load_topology
from mesh.errors import ConfigError


def test_catalogue_covers_every_claim_and_part() -> None:
    shipped = shipped_experiments()
    assert len(shipped) >= 14
    claims = {exp.claim for _, exp in shipped.values()}
    assert None not in claims, [n for n, (_, e) in shipped.items() if e.claim is None]
    assert set(CLAIMS) | set(PARTS) <= claims
    base = load_topology(None)
    for name, (_, exp) in shipped.items():
        assert exp.hypothesis.strip(), name
        assert exp.verify or exp.steady_state, f"{name}: no numbers to check"
        if exp.expect == "deviate":
            assert exp.deviation, name
        topology_for(base, exp)  # the suite can build each one's stack


def test_every_shipped_file_validates_with_the_cli() -> None:
    shipped = shipped_experiments()
    result = CliRunner().invoke(cli, ["chaos", "validate", *[str(p) for p, _ in shipped.values()]])
    assert result.exit_code == 0, result.output
    assert result.output.count(": ok - ") == len(shipped)


_BASE = """\
title: t
hypothesis: h
load: {users: 2}
steady_state:
  - {name: p99, type: locust, metric: p99, over: method, tolerance: {max: 100}}
method:
  - pause: 1s
verify:
  - {name: audit, type: audit, tolerance: {equals: 0}}
"""


def test_a_deviation_must_be_named() -> None:
    with pytest.raises(ExperimentError) as info:
        parse_experiment(_BASE + "expect: deviate\n", "x.yaml")
    assert "must name the deviation" in " ".join(info.value.problems)
    with pytest.raises(ExperimentError) as info:
        parse_experiment(_BASE + "expect: deviate\ndeviation: [audti]\n", "x.yaml")
    assert "'audti' is not a probe of this experiment; probes: audit, p99" in " ".join(
        info.value.problems
    )
    with pytest.raises(ExperimentError) as info:
        parse_experiment(_BASE + "deviation: [audit]\n", "x.yaml")
    assert "for 'expect: deviate' only" in " ".join(info.value.problems)
    with pytest.raises(ExperimentError) as info:
        parse_experiment(_BASE + "claim: speed\n", "x.yaml")
    assert "claim" in " ".join(info.value.problems)
    exp = parse_experiment(_BASE + "expect: deviate\ndeviation: [audit]\nclaim: cdn\n")
    assert exp.deviation == ("audit",)
    assert exp.claim == "cdn"


@pytest.mark.parametrize(
    ("expect", "deviation", "verdict", "failed", "as_expected", "words"),
    [
        ("deviate", ("audit",), Verdict.FAILED, ["audit"], True, "drawback shown"),
        ("deviate", ("audit",), Verdict.FAILED, ["p99"], False, "deviated unexpectedly: p99"),
        ("deviate", ("audit",), Verdict.FAILED, ["audit", "p99"], False, "unexpectedly: p99"),
        ("deviate", ("audit", "p99"), Verdict.FAILED, ["audit"], False, "expected but held: p99"),
        ("deviate", ("audit",), Verdict.PASSED, [], False, "drawback NOT shown"),
        ("deviate", ("audit",), Verdict.ABORTED, [], False, "aborted"),
        ("hold", (), Verdict.PASSED, [], True, "hypothesis held"),
        ("hold", (), Verdict.FAILED, ["p99"], False, "deviated"),
    ],
)
def test_only_the_named_deviation_is_as_expected(
    expect: str,
    deviation: tuple[str, ...],
    verdict: Verdict,
    failed: list[str],
    as_expected: bool,
    words: str,
) -> None:
    outcome, ok = expected_outcome(expect, deviation, verdict, failed)
    assert ok is as_expected
    assert words in outcome


def test_variants_parse_and_change_the_requirements(tmp_path: Path) -> None:
    v = parse_variant("none:resilience.gateway=none,instances.orders=3")
    assert v == Variant("none", {"gateway": "none"}, None, {"orders": 3})
    naive = parse_variant("naive:consistency=naive")
    assert naive.consistency == "naive"
    for bad, words in (
        ("nocolon", "NAME:KEY=VALUE"),
        ("x:resilience.gateway=fast", "use none, basic or full"),
        ("x:instances.orders=0", "count 1-10"),
        ("x:colour=blue", "unknown setting 'colour'"),
        (f"x:topology={tmp_path / 'missing.yaml'}", "no topology file"),
        ("x:env.orders=off", "env.<component>.<NAME>=VALUE"),
        ("x:env.orders.lower=off", "NAME in capitals"),
    ):
        with pytest.raises(ConfigError, match=words):
            parse_variant(bad)
    _, exp = shipped_experiments()["slow-recommendations"]
    changed = variant_experiment(exp, v)
    assert changed.requires.resilience["gateway"] == "none"
    assert changed.requires.instances["orders"] == 3
    topo = topology_for(load_topology(None), changed)
    assert topo.components["gateway"].resilience == "none"
    assert topo.instance_count("orders") == 3
    one = variant_topology(load_topology(None), exp, parse_variant("one:instances.catalog=1"))
    assert one.instance_count("catalog") == 1
    _, kill = shipped_experiments()["orders-kill"]
    assert variant_experiment(kill, naive).requires.consistency == {"orders": "naive"}
    lifted = parse_variant("no-budget:env.orders.TESTBED_RETRY_BUDGET=off")
    assert lifted.describe() == "env.orders.TESTBED_RETRY_BUDGET=off"
    topo = variant_topology(load_topology(None), exp, lifted)
    assert topo.components["orders"].env["TESTBED_RETRY_BUDGET"] == "off"
    with pytest.raises(ConfigError, match="no component 'ordres'"):
        variant_topology(load_topology(None), exp, parse_variant("x:env.ordres.A=1"))


def _m(name: str, p99: float, err: float = 0.0, audit: str = "pass") -> Metrics:
    return Metrics(name, "passed", True, 100, err, p99 / 2, p99, 10.0, audit)


def test_the_sentence_names_the_biggest_difference() -> None:
    text = difference_sentence([_m("none", 2400), _m("full", 400)])
    assert text == "P99 during the method is 2,400 ms with none against 400 ms with full (6.0x)."
    assert "audit reads pass with saga, 3 violations with naive" in difference_sentence(
        [_m("saga", 300), _m("naive", 310, audit="3 violations")]
    )
    assert "behaved alike" in difference_sentence([_m("a", 300), _m("b", 310)])
    assert "12.0% of requests failed with a" in difference_sentence(
        [_m("a", 300, err=0.12), _m("b", 310)]
    )


def test_a_probe_met_in_one_variant_and_missed_in_the_other_is_the_difference() -> None:
    budget = dataclasses.replace(
        _m("budget", 300), probes={"tries-per-call": Probe(1.08, True, "<= 1.3")}
    )
    lifted = dataclasses.replace(
        _m("no-budget", 310), probes={"tries-per-call": Probe(1.74, False, "<= 1.3")}
    )
    assert difference_sentence([budget, lifted]) == (
        "Tries-per-call is 1.08 with budget against 1.74 with no-budget (wanted <= 1.3)."
    )
    assert probe_rows([budget, lifted, _m("third", 300)]) == [
        ("tries-per-call", ["1.08 ok", "1.74 (wanted <= 1.3)", "-"])
    ]


def test_metrics_and_pages_from_a_journal(tmp_path: Path) -> None:
    journal = {
        "verdict": "passed",
        "as_expected": True,
        "timeline": [{"phase": "method", "start": 100.0, "end": 120.0}],
        "load": {"method": {"requests": 400, "error_ratio": 0.01, "p99_ms": 900, "p50_ms": 80}},
        "probes": [
            {"phase": "steady_state:before", "name": "p99", "value": 10, "ok": True},
            {"phase": "verify:after", "name": "tries", "value": 1.2, "ok": True,
             "tolerance": "<= 1.3"},
        ],
    }  # fmt: skip
    m = metrics_of("full", journal, None)
    assert (m.rps, m.p50_ms, m.p99_ms, m.error_ratio) == (20.0, 80, 900, 0.01)
    assert (m.detected, m.located) == ("-", "-")
    assert m.probes == {"tries": Probe(1.2, True, "<= 1.3")}  # final values only
    m = dataclasses.replace(m, detected="1.8 s", located="yes (#1)")
    page = write_compare_report(
        tmp_path,
        title="T <1>",
        source="x",
        variants=[("full", "resilience.gateway=full")],
        rows=[m.__dict__],
        journals=[("full", None)],
        sentence="Only one variant ran.",
        probes=probe_rows([m]),
    )
    html = page.read_text()
    assert '<td>tries</td><td class="num">1.2 ok</td>' in html
    assert "T &lt;1&gt;" in html
    assert "resilience.gateway=full" in html
    assert "20.0" in html
    assert "<td>1.8 s</td><td>yes (#1)</td>" in html
    index = write_suite_index(
        tmp_path,
        [{"name": "cdn-origin-down", "claim": "cdn", "error": "stack did not start"}],
        seconds=3,
    )
    text = index.read_text()
    assert "cdn-origin-down" in text
    assert "stack did not start" in text
    assert "0/1" in text


def test_a_cut_load_still_covers_floods_and_management_steps() -> None:
    shipped = shipped_experiments()
    flood = fit_load(shipped["rate-limit-one-key"][1])
    assert flood.load is not None
    assert flood.load.duration >= flood.load.warmup + 2 + 20  # the pause and the 20 s flood
    assert method_seconds(shipped["registry-kill-scaling"][1].method) >= 2 + 0.5 + 2 * 10 + 3
    # A canary's judging window is part of the method: a cut load still covers it.
    assert method_seconds(shipped["canary-rollback"][1].method) >= 3 + 25 + 5


def test_flexibility_has_a_judged_canary_with_a_bad_build() -> None:
    _, exp = shipped_experiments()["canary-rollback"]
    assert exp.claim == "flexibility"
    (deploy,) = [s for s in exp.method if isinstance(s, DeployStep)]
    canary = deploy.deploy.canary
    assert canary is not None
    assert canary.bad_build is not None
    assert 0 < canary.share < 0.5


@pytest.mark.parametrize(
    ("canary", "named"),
    [
        ("{share: 1.5}", "share"),
        ("{judge_for: soon}", "judge_for"),
        ("{bad_build: {type: service.latency}}", "latency_ms"),
        ("{bad_build: {type: process.kill}}", "bad_build.type"),
        ("{shares: 0.2}", "shares"),
    ],
)
def test_a_bad_canary_step_is_named(canary: str, named: str) -> None:
    text = _BASE.replace(
        "  - pause: 1s", f"  - deploy: {{service: payments, version: v2, canary: {canary}}}"
    )
    with pytest.raises(ExperimentError, match=named):
        parse_experiment(text, "exp.yaml")
