"""``testbed k8s``: manifests from the topology, validated offline against the API types.

The validator (``management/k8s/validate``, built into ``tools/bin/k8s-validate`` by
``make setup``) decodes every document strictly into k8s.io/api (v0.37.2) and Chaos Mesh's
api types: a misspelt or misplaced field is an error, as it is for the API server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from management.alerting import alert_rules
from management.cli import cli
from management.compose import compose_plan, overview_dashboard, prometheus_config
from management.k8s.render import chaos_mesh_resources, render_k8s
from management.k8s.validate_cli import validate_manifests, validator_path
from management.topology import Topology, load_topology


@pytest.fixture(scope="module")
def topology() -> Topology:
    return load_topology(None)


@pytest.fixture
def out(tmp_path: Path, topology: Topology) -> Path:
    render_k8s(topology, out_dir=tmp_path / "k8s")
    return tmp_path / "k8s"


def _docs(out: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(out.rglob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _by(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _needs_validator() -> None:
    if validator_path() is None:
        pytest.skip("tools/bin/k8s-validate is not built (make setup)")


def test_every_manifest_decodes_strictly_into_the_api_types(out: Path) -> None:
    _needs_validator()
    ok, report = validate_manifests(out)
    assert ok, report
    assert report.startswith("ok: ")
    count = int(report.split()[1])
    assert count == len(_docs(out))


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        ("30-instances.yaml", "  replicas: 1\n", "  replica: 1\n", 'unknown field "replica"'),
        (
            "30-instances.yaml",
            "path: /readyz\n            port: 20010",
            "path: /readyz\n            port: 20099",
            "readiness probe on port 20099, which it does not declare",
        ),
        (
            "chaos-mesh/orders-to-registry-latency.yaml",
            "direction: to",
            "directon: to",
            'unknown field "directon"',
        ),
        (
            "20-infra.yaml",
            "kind: Deployment",
            "kind: Deploymnet",
            'unknown apiVersion/kind "apps/v1/Deploymnet"',
        ),
    ],
)
def test_a_broken_manifest_fails_with_the_reason(
    out: Path, file: str, old: str, new: str, expected: str
) -> None:
    _needs_validator()
    path = out / file
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    ok, report = validate_manifests(out)
    assert not ok
    assert expected in report, report
    assert str(path) in report


def test_a_deployment_and_a_service_per_instance_with_health_probes(
    out: Path, topology: Topology
) -> None:
    docs = _docs(out)
    deployments, services = _by(docs, "Deployment"), _by(docs, "Service")
    plan = compose_plan(topology)
    for inst in plan.instances:
        dep = deployments[inst.instance_id]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == inst.component
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": inst.port}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": inst.port}
        assert container["command"] == ["python", "-m", inst.module]
        svc = services[inst.instance_id]
        assert {p["port"] for p in svc["spec"]["ports"]} == {inst.port, inst.admin_port}
        assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_every_hostname_in_the_env_is_a_service(out: Path) -> None:
    docs = _docs(out)
    services = _by(docs, "Service")
    ports = {name: {p["port"] for p in s["spec"]["ports"]} for name, s in services.items()}
    for dep in _by(docs, "Deployment").values():
        for container in dep["spec"]["template"]["spec"]["containers"]:
            for var in container.get("env", []):
                if "KEY" in var["name"]:
                    continue  # api_key:rate:burst, not an address
                for host, port in _addresses(var["value"]):
                    assert host in ports, f"{dep['metadata']['name']}: {var}"
                    assert int(port) in ports[host], f"{dep['metadata']['name']}: {var}"


def _addresses(value: str) -> list[tuple[str, str]]:
    import re

    return re.findall(r"(?:http://)?([a-z][a-z0-9-]*):(\d{2,5})", value)


def test_toxiproxy_prometheus_and_grafana_reuse_the_compose_derivations(
    out: Path, topology: Topology
) -> None:
    docs = _docs(out)
    configs = _by(docs, "ConfigMap")
    plan = compose_plan(topology)
    proxies = json.loads(configs["toxiproxy"]["data"]["toxiproxy.json"])
    assert [p["name"] for p in proxies] == [p.name for p in plan.proxies]
    toxiproxy_ports = {p["port"] for p in _by(docs, "Service")["toxiproxy"]["spec"]["ports"]}
    assert {int(p["listen"].rpartition(":")[2]) for p in proxies} <= toxiproxy_ports
    scrape = yaml.safe_load(configs["prometheus"]["data"]["prometheus.yml"])
    assert scrape == prometheus_config(plan)
    # Every rule file it names is in the same ConfigMap (mounted whole at /etc/prometheus).
    for name in scrape["rule_files"]:
        rules = yaml.safe_load(configs["prometheus"]["data"][name])
        assert rules == alert_rules(topology)
    dashboard = json.loads(configs["grafana-dashboards"]["data"]["testbed-overview.json"])
    assert dashboard == overview_dashboard(topology)
    assert {"jaeger", "prometheus", "grafana", "locust-master", "locust-worker"} <= set(
        _by(docs, "Deployment")
    )
    worker = _by(docs, "Deployment")["locust-worker"]
    assert worker["spec"]["replicas"] == 2
    assert "--worker" in worker["spec"]["template"]["spec"]["containers"][0]["command"]


def test_faults_outside_toxiproxy_map_to_chaos_mesh(topology: Topology) -> None:
    resources = chaos_mesh_resources(topology)
    kinds = {r["kind"] for r in resources.values()}
    assert kinds == {"PodChaos", "StressChaos", "NetworkChaos"}
    kill = resources["orders-process-kill"]
    assert kill["spec"]["action"] == "pod-kill"
    assert kill["spec"]["selector"]["labelSelectors"] == {"app.kubernetes.io/component": "orders"}
    assert resources["payments-cpu-burn"]["spec"]["stressors"]["cpu"]["load"] == 50
    # Links Toxiproxy carries (to proxied services) get no NetworkChaos; the registry's do.
    assert "orders-to-payments-latency" not in resources
    assert resources["orders-to-registry-down"]["spec"]["action"] == "partition"


def test_the_cli_writes_and_checks(tmp_path: Path) -> None:
    _needs_validator()
    result = CliRunner().invoke(cli, ["k8s", "--out", str(tmp_path / "m"), "--locust-workers", "3"])
    assert result.exit_code == 0, result.output
    assert "ok: " in result.output
    worker = yaml.safe_load((tmp_path / "m" / "40-locust.yaml").read_text().split("---\n")[-1])
    assert worker["spec"]["replicas"] == 3


def test_committed_k8s_folder_equals_a_fresh_render(tmp_path: Path, topology: Topology) -> None:
    from management.k8s.render import default_out_dir

    committed = default_out_dir()
    fresh = tmp_path / "fresh"
    render_k8s(topology, out_dir=fresh)
    names = {p.relative_to(fresh) for p in fresh.rglob("*.yaml")}
    assert names == {p.relative_to(committed) for p in committed.rglob("*.yaml")}, (
        "k8s/ is stale: run `testbed k8s`"
    )
    for name in names:
        assert (committed / name).read_text() == (fresh / name).read_text(), (
            f"k8s/{name} is stale: run `testbed k8s`"
        )
