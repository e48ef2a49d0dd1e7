"""The generated alert rules: valid for promtool, and firing (and not) on crafted series."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from management.alerting import (
    AlertPolicy,
    BurnTier,
    alert_rules,
    check_rules,
    run_rule_tests,
    write_rules,
)
from management.topology import Topology, load_topology
from mesh.errors import ConfigError

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing: run make setup"
)
DATA = Path(__file__).parent / "data"
TESTS = DATA / "alerts_test.yml"


@pytest.fixture
def default_topology() -> Topology:
    return load_topology()


def _alerts(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for g in data["groups"] for r in g["rules"] if r.get("alert") == name]


def test_every_component_and_every_rpc_link_gets_its_group(default_topology: Topology) -> None:
    data = alert_rules(default_topology)
    names = [g["name"] for g in data["groups"]]
    assert {f"testbed-{c}" for c in default_topology.components} <= set(names)
    rpc_links = [
        f"testbed-link-{link.source}-{link.target}"
        for link in default_topology.links
        if default_topology.components[link.target].kind == "service"
    ]
    assert rpc_links
    assert set(rpc_links) <= set(names)
    assert "testbed-link-cdn-balancer" not in names  # not an RPC link
    # Per public route: only the gateway's routes are the public API.
    routes = _alerts(data, "RouteErrorBudgetBurn")
    assert {r["labels"]["service"] for r in routes} == {"gateway"}
    # The orders -> payments link's latency threshold is its per-try timeout (250 ms).
    (fast, _) = _alerts(data, "LinkLatencyBudgetBurn")[-2:]
    assert fast["labels"]["link"] == "orders->payments"
    slow = next(r for r in data["groups"] if r["name"] == "testbed-link-orders-payments")
    assert 'le="0.25"' in slow["rules"][1]["expr"]


def test_a_threshold_above_every_bucket_is_refused(default_topology: Topology) -> None:
    with pytest.raises(ConfigError, match="above every bucket"):
        alert_rules(default_topology, AlertPolicy(service_latency_s=60.0))


def test_tiers_set_the_windows(default_topology: Topology) -> None:
    policy = AlertPolicy(tiers=(BurnTier(20, 5, 10.0),))
    assert policy.windows() == [5, 20]
    (alert, *_) = _alerts(alert_rules(default_topology, policy), "ServiceErrorBudgetBurn")
    assert "ratio_rate20s" in alert["expr"]
    assert "ratio_rate5s" in alert["expr"]
    assert "> 0.1 " in alert["expr"]


@needs_promtool
def test_generated_rules_pass_promtool_check(default_topology: Topology, tmp_path: Path) -> None:
    path = write_rules(default_topology, tmp_path / "alerts.yml")
    assert "SUCCESS" in check_rules(path)


@needs_promtool
def test_generated_rules_pass_their_promtool_unit_tests(tmp_path: Path) -> None:
    write_rules(load_topology(DATA / "alerts_topology.yaml"), tmp_path / "alerts.yml")
    shutil.copy(TESTS, tmp_path / "alerts_test.yml")
    assert "SUCCESS" in run_rule_tests(tmp_path / "alerts_test.yml")


@needs_promtool
def test_a_failing_rule_test_is_reported(tmp_path: Path) -> None:
    write_rules(load_topology(DATA / "alerts_topology.yaml"), tmp_path / "alerts.yml")
    (tmp_path / "wrong_test.yml").write_text(
        "rule_files: [alerts.yml]\n"
        "evaluation_interval: 1s\n"
        "tests:\n"
        "  - interval: 1s\n"
        "    input_series:\n"
        "      - {series: 'up{job=\"orders\",instance=\"orders-1\"}', values: '1x9 0x5'}\n"
        "      - {series: 'up{job=\"orders\",instance=\"orders-2\"}', values: '1x14'}\n"
        "      - {series: 'up{job=\"catalog\",instance=\"catalog-1\"}', values: '1x14'}\n"
        "      - {series: 'up{job=\"catalog\",instance=\"catalog-2\"}', values: '1x14'}\n"
        "    alert_rule_test:\n"
        "      - {eval_time: 12s, alertname: InstanceDown, exp_alerts: []}\n"
    )
    with pytest.raises(ConfigError, match="InstanceDown"):
        run_rule_tests(tmp_path / "wrong_test.yml")
