"""The topology file: validation names file, line and problem; plans and configs derive from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from management.plan import build_plan
from management.prometheus import check_config, write_prometheus_files
from management.topology import TopologyError, load_topology, parse_topology

GOOD = """\
name: t
regions:
  sa: {latency_ms: 100}
components:
  registry: {kind: registry}
  api: {kind: service, instances: 2}
  balancer: {kind: balancer}
  cdn: {kind: cdn, regions: [sa]}
links:
  - {from: cdn, to: balancer}
  - {from: balancer, to: api}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "topo.yaml")
    return info.value.problems


def test_default_topology_loads_and_names_every_component() -> None:
    topo = load_topology()
    assert {"registry", "catalog", "orders", "gateway", "balancer", "cdn"} <= set(topo.components)
    assert topo.instance_count("cdn") == 3


def test_schema_error_names_file_line_and_problem() -> None:
    text = GOOD.replace("instances: 2", "instances: -3")
    (problem,) = problems(text)
    assert problem.startswith("topo.yaml:6:")
    assert "components.api.instances" in problem
    assert "greater than or equal to 0" in problem


def test_unknown_field_is_reported_at_its_key() -> None:
    text = GOOD.replace(
        "  balancer: {kind: balancer}", "  balancer:\n    kind: balancer\n    colour: red"
    )
    (problem,) = problems(text)
    assert problem.startswith("topo.yaml:9:5:")
    assert "unknown field 'colour'" in problem


def test_cross_references_are_checked_with_lines() -> None:
    text = GOOD.replace("regions: [sa]", "regions: [sa, mars]").replace(
        "{from: balancer, to: api}", "{from: balancer, to: nowhere}"
    )
    found = problems(text)
    assert any(p.startswith("topo.yaml:8:") and "unknown region 'mars'" in p for p in found)
    assert any(p.startswith("topo.yaml:11:") and "unknown component 'nowhere'" in p for p in found)


def test_duplicate_keys_and_bad_yaml() -> None:
    (dupe,) = problems(GOOD.replace("  balancer: {kind: balancer}", "  api: {kind: balancer}"))
    assert dupe.startswith("topo.yaml:7:3:")
    assert "duplicate key 'api'" in dupe
    (bad,) = problems("components:\n  a: [1,\n")
    assert bad.startswith("topo.yaml:")
    assert "not valid YAML" in bad


def test_plan_gives_each_instance_its_ports_proxy_and_env(tmp_path: Path) -> None:
    plan = build_plan(parse_topology(GOOD), base_port=40000, run_dir=tmp_path)
    ports = plan.ports()
    assert len(ports) == len(set(ports))  # no port used twice
    api1 = plan.instance("api-1")
    assert api1.advertise == f"127.0.0.1:{api1.proxy_port}"  # registry advertises the proxy
    assert api1.env["TESTBED_REGISTRY_URL"] == plan.registry_url
    pop = plan.instance("cdn-sa")
    link = next(p for p in plan.proxies if p.name == "cdn-sa-to-balancer")
    assert link.latency_ms == 100
    assert link.upstream == plan.instance("balancer-1").address
    assert pop.env["TESTBED_REGION"] == "sa"
    # scaling never moves the ports of running instances
    bigger = build_plan(
        parse_topology(GOOD).with_instances("api", 3), base_port=40000, run_dir=tmp_path
    )
    assert bigger.instance("api-1") == api1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: run make setup")
def test_generated_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    plan = build_plan(load_topology(), base_port=40000, run_dir=tmp_path)
    config = write_prometheus_files(plan, tmp_path / "prometheus")
    assert "SUCCESS" in check_config(config)
    text = config.read_text()
    assert "scrape_interval: 1s" in text
    targets = (tmp_path / "prometheus" / "targets" / "catalog.json").read_text()
    assert plan.instance("catalog-2").address in targets


def test_one_consistency_mode_for_the_whole_saga() -> None:
    text = """
components:
  registry: {kind: registry}
  payments: {kind: service}
  orders: {kind: service, consistency: naive}
"""
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "mixed.yaml")
    assert "mixed.yaml:5:" in str(info.value)
    assert "defaults.consistency" in str(info.value)
