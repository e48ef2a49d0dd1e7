"""Exported experiments: what Chaos Toolkit receives, and that its own validator accepts it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import TypeAdapter

from chaos.cli import chaos
from chaos.ctk.actions import steps
from chaos.ctk.control import verdict_of
from chaos.ctk.export import export_experiment
from chaos.execute import shipped_experiments
from chaos.journal import Verdict
from chaos.loader import iter_faults, parse_experiment
from chaos.model import PauseStep, Step
from mesh.errors import ConfigError

CHAOS = Path(sys.executable).with_name("chaos")

PARALLEL = """\
title: two at once
hypothesis: h
seed: 3
method:
  - pause: 1s
  - fault: {type: network.latency, target: {service: payments}, latency_ms: 5, duration: 1s}
  - parallel:
      - fault: {type: process.freeze, target: {service: orders}, blast_radius: one}
      - sequence:
          - pause: 1
          - fault: {name: boom, type: service.error_rate, target: {instance: catalog-1}}
  - pause: 2s
verify:
  - {name: audit, type: audit, tolerance: {equals: 0}}
"""


def test_every_shipped_experiment_exports_with_its_probes_faults_and_control() -> None:
    for name, (_, exp) in shipped_experiments().items():
        data = export_experiment(exp, name=name)
        assert data["configuration"]["testbed_name"] == name
        (control,) = data["controls"]
        assert control["provider"]["module"] == "chaos.ctk.control"
        assert parse_experiment(json.dumps(control["provider"]["arguments"]["testbed"])) == exp
        probes = data["steady-state-hypothesis"]["probes"]
        assert len(probes) == len(exp.steady_state) + len(exp.verify)
        for probe in probes:
            assert probe["provider"]["module"] == "chaos.ctk.probes"
            assert probe["tolerance"]["provider"]["func"] == "within"
        verify = control["provider"]["arguments"]["verify"]
        assert {p["name"] for p in probes if p["name"] in verify} == set(verify)
        for probe in probes:
            if probe["name"] in verify:
                assert probe["tolerance"]["provider"]["arguments"]["when"] == ["after"]
        faults = [a for a in data["method"] if a["provider"]["func"] == "fault"]
        # No step is lost: every step but the pauses is one activity, and every fault of the
        # experiment is either an action of its own or inside a group the `steps` action runs.
        acting = [s for s in exp.method if not isinstance(s, PauseStep)]
        assert len(data["method"]) == len(acting) or not acting, name
        grouped = TypeAdapter(list[Step]).validate_python(
            [
                s
                for a in data["method"]
                if a["provider"]["func"] == "steps"
                for s in a["provider"]["arguments"]["steps"]
            ]
        )
        assert len(faults) + len(list(iter_faults(grouped))) == len(list(iter_faults(exp.method)))
        for action in faults:
            assert action["provider"]["arguments"]["seed"] == exp.seed
            assert action["provider"]["arguments"]["spec"]["name"] == action["name"]
        assert data["rollbacks"][0]["provider"]["func"] == "rollback"


def test_groups_pauses_and_fault_names_follow_the_testbed_numbering() -> None:
    exp = parse_experiment(PARALLEL)
    method = export_experiment(exp)["method"]
    assert [a["name"] for a in method] == ["latency-1", "parallel-from-fault-2"]
    assert method[0]["pauses"] == {"before": 1.0}
    assert method[1]["pauses"] == {"after": 2.0}
    group = method[1]["provider"]["arguments"]
    assert group["first_index"] == 2
    (parallel,) = group["steps"]
    first, second = parallel["parallel"]
    assert first["fault"]["name"] == "freeze-2"
    assert second["sequence"][1]["fault"]["name"] == "boom"
    # The group's JSON is a valid testbed method fragment again.
    parse_experiment(json.dumps({"title": "t", "hypothesis": "h", "method": group["steps"]}))


def test_chaos_toolkit_validates_every_exported_shipped_experiment(tmp_path: Path) -> None:
    if not CHAOS.exists():
        pytest.skip("the chaostoolkit CLI is not installed (make setup)")
    for name in shipped_experiments():
        out = tmp_path / f"{name}.json"
        result = CliRunner().invoke(chaos, ["export", name, "--out", str(out)])
        assert result.exit_code == 0, result.output
        proc = subprocess.run(
            [str(CHAOS), "--no-log-file", "validate", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "experiment syntax and semantic look valid" in proc.stdout + proc.stderr


def test_a_broken_experiment_is_not_exported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: t\nhypothesis: h\nmethod: [{fault: {type: network.latncy}}]\n")
    result = CliRunner().invoke(chaos, ["export", str(bad)])
    assert result.exit_code == 2
    assert "did you mean 'network.latency'" in result.output


def test_chaos_toolkit_statuses_map_to_testbed_verdicts() -> None:
    met = {"before": {"steady_state_met": True}, "after": {"steady_state_met": True}}
    assert verdict_of({"status": "completed", "deviated": False, "steady_states": met}) is (
        Verdict.PASSED
    )
    assert verdict_of({"status": "completed", "deviated": True}) is Verdict.FAILED
    not_before = {"before": {"steady_state_met": False}, "after": None}
    assert verdict_of({"status": "completed", "deviated": False, "steady_states": not_before}) is (
        Verdict.ABORTED
    )
    assert verdict_of({"status": "interrupted", "deviated": False}) is Verdict.ABORTED
    assert verdict_of({"status": "failed", "deviated": False}) is Verdict.ERROR


def test_a_bad_step_names_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"steps\.0"):
        steps([{"faultt": {}}], configuration={"testbed_run_dir": "/nonexistent"})
