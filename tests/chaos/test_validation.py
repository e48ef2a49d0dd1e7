"""Experiment files are validated before anything is touched; errors name file, line and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from chaos.cli import chaos
from chaos.execute import shipped_experiments
from chaos.loader import ExperimentError, load_experiment, parse_experiment
from chaos.model import Tolerance, parse_duration

BAD = """\
title: broken
hypothesis: typos everywhere
load:
  userz: 3
steady_state:
  - type: locust
    metric: p99
    tolerance: {mx: 1}
method:
  - pause: 5s
  - fault:
      type: network.latency
      target: {service: payments}
      latncy_ms: 3
  - parallel:
      - fault: {type: network.latncy, target: {service: a}}
  - foo: 1
  - fault: {type: process.kill, target: {link: a->b}}
safeguards:
  - probe: {type: locust, metric: p99, tolerance: {max: 1}}
    fr: 3s
"""


def test_every_problem_is_reported_with_its_line_and_a_fix(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(ExperimentError) as info:
        load_experiment(path)
    problems = info.value.problems
    assert problems == [
        f"{path}:4:3: load.userz: unknown field 'userz'; did you mean 'users'?",
        f"{path}:8:17: steady_state[0].tolerance.mx: unknown field 'mx'; did you mean 'max'?",
        f"{path}:14:7: method[1].fault.latncy_ms: unknown field 'latncy_ms'; "
        "did you mean 'latency_ms'?",
        f"{path}:16:23: method[2].parallel[0].fault.type: unknown type 'network.latncy'; "
        "did you mean 'network.latency'?",
        f"{path}:17:5: method[3]: a step is a mapping with exactly one of 'pause', 'fault', "
        "'parallel', 'sequence', 'scale', 'deploy', 'flood'",
        f"{path}:21:5: safeguards[0].fr: unknown field 'fr'; did you mean 'for'?",
    ]


def test_cross_checks_after_the_schema() -> None:
    text = """\
title: t
hypothesis: h
steady_state:
  - {type: locust, metric: error_ratio, tolerance: {max: 0.1}}
method:
  - fault: {type: process.kill, target: {link: cdn->balancer}}
"""
    with pytest.raises(ExperimentError) as info:
        parse_experiment(text, "x.yaml")
    assert info.value.problems == [
        "x.yaml:4:5: steady_state[0]: a locust probe needs the experiment's 'load'; "
        "add e.g. 'load: {users: 10}'",
        "x.yaml:6:41: method[0].fault.target: process.kill acts on processes; "
        "a link can only take network.* faults",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "title: t\nhypothesis: h\nmethod: []\n",
            "x.yaml:3:9: method: List should have at least 1",
        ),
        ("title: t\nhypothesis: h\nmethod:\n  - pause: soon\n", "x.yaml:4:12: method[0].pause:"),
        ("title: t\ntitle: u\n", "x.yaml:2:1: title: duplicate key 'title'"),
        ("title: [\n", "x.yaml:2:1: not valid YAML"),
        ("hypothesis: h\nmethod: [{pause: 1}]\n", "x.yaml:1:1: (top level): field 'title'"),
        (
            "title: t\nhypothesis: h\nmethod:\n  - fault: {type: network.down,"
            " target: {service: a, instance: b}}\n",
            "x.yaml:4:41: method[0].fault.target: give exactly one of",
        ),
        (
            "title: t\nhypothesis: h\nmethod:\n  - fault: {type: network.down,"
            " target: {service: a}, blast_radius: 150%}\n",
            "method[0].fault.blast_radius: '150%': a percentage must be above 0%",
        ),
        (
            "title: t\nhypothesis: h\nload: {users: 2, workers: 3}\nmethod: [{pause: 1}]\n",
            "x.yaml:3:7: load: 3 workers for 2 users would leave workers idle",
        ),
        (
            "title: t\nhypothesis: h\nload: {users: 90, workers: 99}\nmethod: [{pause: 1}]\n",
            "load.workers: Input should be less than or equal to 32",
        ),
    ],
)
def test_single_problems(text: str, expected: str) -> None:
    with pytest.raises(ExperimentError) as info:
        parse_experiment(text, "x.yaml")
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_shipped_experiments_are_valid() -> None:
    shipped = shipped_experiments()
    assert {"payments-latency", "orders-kill", "orders-kill-naive"} <= set(shipped)
    assert shipped["orders-kill-naive"][1].expect == "deviate"
    assert shipped["orders-kill-naive"][1].deviation == ("audit",)
    assert shipped["orders-kill"][1].expect == "hold"


def test_cli_refuses_an_invalid_file_and_starts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    run_dir = tmp_path / "no-stack-here"
    result = CliRunner().invoke(chaos, ["run", str(path), "--run-dir", str(run_dir)])
    assert result.exit_code == 2
    assert "nothing was started" in result.output
    assert f"{path}:14:7: method[1].fault.latncy_ms" in result.output
    assert not run_dir.exists()
    result = CliRunner().invoke(chaos, ["validate", str(path), "orders-kill"])
    assert result.exit_code == 2
    assert "orders-kill.yaml: ok" in result.output


def test_durations_and_tolerances() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120
    assert parse_duration(3) == 3.0
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    assert Tolerance(max=1).accepts(1.0)
    assert not Tolerance(max=1).accepts(1.01)
    assert not Tolerance(max=1).accepts(None)
    assert Tolerance(range=(1, 2)).accepts(1.5)
    assert not Tolerance(range=(1, 2)).accepts(2.5)
    assert Tolerance(equals=200).accepts(200)
    assert not Tolerance(equals=200).accepts(0)
    assert Tolerance(min=2).describe() == ">= 2"
