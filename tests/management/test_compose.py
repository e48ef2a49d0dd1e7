"""The compose files: derived from the topology, consistent, valid, and committed without drift.

Docker is not needed (nor run): the files are parsed and cross-checked, Prometheus' config goes
through ``promtool``, Jaeger's through ``jaeger validate`` and Toxiproxy's config and the toxics
job through a real ``toxiproxy-server`` on a free loopback port.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from management import compose
from management.cli import cli
from management.compose import (
    RUN_DIR,
    ComposeLayout,
    compose_files,
    compose_plan,
    container_env,
    render_compose,
)
from management.plan import DEFAULT_BASE_PORT, LOCALHOST, Plan, build_plan
from management.topology import Topology, load_topology, parse_topology
from management.toxiproxy import INSTALL_HINT, REPO_ROOT, find_binary
from mesh.errors import ConfigError
from tests.support.processes import free_port

INFRA = {"toxiproxy", "toxiproxy-toxics", "jaeger", "prometheus", "grafana", "locust"}
PUBLISHED_INFRA = {"grafana", "jaeger", "prometheus", "locust"}
_ADDRESS = re.compile(r"^(?:http://)?([a-z0-9_.-]+):(\d+)$")


def _render(topology: Topology, out: Path) -> dict[str, Any]:
    render_compose(topology, out_dir=out, source_root=REPO_ROOT)
    doc = yaml.safe_load((out / "docker-compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def default_topology() -> Topology:
    return load_topology(None)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory, default_topology: Topology) -> Path:
    folder = tmp_path_factory.mktemp("compose")
    render_compose(default_topology, out_dir=folder, source_root=REPO_ROOT)
    return folder


@pytest.fixture(scope="module")
def doc(out: Path) -> dict[str, Any]:
    data = yaml.safe_load((out / "docker-compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def plan(default_topology: Topology) -> Plan:
    # Built here the way the embedded stack builds it, independently of management.compose.
    return build_plan(
        default_topology, base_port=DEFAULT_BASE_PORT, run_dir=Path(RUN_DIR), jaeger=True
    )


# ---- services -----------------------------------------------------------------------------------
def test_one_service_per_planned_instance_plus_infra(
    doc: dict[str, Any], plan: Plan, out: Path, default_topology: Topology
) -> None:
    instances = {i.instance_id for i in plan.instances}
    assert len(instances) == sum(map(default_topology.instance_count, default_topology.components))
    assert set(doc["services"]) == instances | INFRA
    for inst in plan.instances:
        service = doc["services"][inst.instance_id]
        assert service["command"] == ["python", "-m", inst.module]
        assert service["image"] == compose.APP_IMAGE
        context = (out / service["build"]["context"]).resolve()
        assert context == REPO_ROOT
        assert (context / service["build"]["dockerfile"]).resolve() == (out / "Dockerfile")
        probe = service["healthcheck"]["test"]
        assert probe[:3] == ["CMD", "python", "-c"]
        assert f"http://127.0.0.1:{inst.port}/readyz" in probe[3]


def test_scaling_in_the_topology_adds_services(tmp_path: Path, default_topology: Topology) -> None:
    doc = _render(default_topology.with_instances("catalog", 4), tmp_path)
    catalogs = sorted(n for n in doc["services"] if n.startswith("catalog-"))
    assert catalogs == ["catalog-1", "catalog-2", "catalog-3", "catalog-4"]
    groups = yaml.safe_load((tmp_path / "prometheus.yml").read_text())["scrape_configs"]
    catalog_job = next(j for j in groups if j["job_name"] == "catalog")
    assert len(catalog_job["static_configs"]) == 4
    proxies = {p["name"] for p in json.loads((tmp_path / "toxiproxy.json").read_text())}
    assert {"catalog-3", "catalog-4"} <= proxies


def test_depends_on_targets_exist_and_form_no_cycle(doc: dict[str, Any]) -> None:
    services = doc["services"]
    graph = {name: list(s.get("depends_on", {})) for name, s in services.items()}
    for name, targets in graph.items():
        for target in targets:
            assert target in services, f"{name} depends on unknown service {target}"
            condition = services[name]["depends_on"][target]["condition"]
            if "healthcheck" in services[target]:
                assert condition == "service_healthy", (name, target)
            elif target == "toxiproxy-toxics":
                assert condition == "service_completed_successfully"
            else:
                assert condition == "service_started", (name, target)
    done: set[str] = set()
    while len(done) < len(graph):
        ready = [n for n, deps in graph.items() if n not in done and set(deps) <= done]
        assert ready, f"dependency cycle among {sorted(set(graph) - done)}"
        done.update(ready)


def test_start_order_follows_the_links(doc: dict[str, Any]) -> None:
    deps = {n: set(s.get("depends_on", {})) for n, s in doc["services"].items()}
    assert {"catalog-1", "catalog-2", "inventory-1", "payments-1", "toxiproxy"} <= deps["orders-1"]
    assert {"gateway-1", "gateway-2", "registry-1"} <= deps["balancer-1"]
    assert {"balancer-1", "toxiproxy", "toxiproxy-toxics"} <= deps["cdn-sa"]
    assert deps["registry-1"] == {"jaeger"}


def test_link_cycles_are_broken_not_copied(tmp_path: Path) -> None:
    topo = parse_topology(
        """
components:
  a: {kind: service, module: services.catalog}
  b: {kind: service, module: services.catalog}
links:
  - {from: a, to: b}
  - {from: b, to: a}
"""
    )
    doc = _render(topo, tmp_path)
    assert "b-1" in doc["services"]["a-1"]["depends_on"]
    assert "a-1" not in doc["services"]["b-1"].get("depends_on", {})
    # No registry, no CDN: no region latency job, no Locust (it needs PoPs to shop through).
    assert set(doc["services"]) == {"a-1", "b-1", "toxiproxy", "jaeger", "prometheus", "grafana"}
    assert not (tmp_path / "toxics.json").exists()


def _host_port(binding: str) -> int:
    host, port, _container = binding.rsplit(":", 2)
    assert host == LOCALHOST, f"{binding} is published beyond loopback"
    return int(port)


def test_published_ports_are_unique_and_only_the_entry_points(
    doc: dict[str, Any], plan: Plan
) -> None:
    published = {n: s["ports"] for n, s in doc["services"].items() if "ports" in s}
    entry = {i.instance_id for i in plan.instances if i.kind in ("cdn", "balancer")}
    assert set(published) == entry | PUBLISHED_INFRA
    host_ports = [_host_port(b) for bindings in published.values() for b in bindings]
    assert len(host_ports) == len(set(host_ports))
    for inst in plan.instances:
        if inst.instance_id in entry:
            # The same URL as `testbed up` prints for it.
            assert published[inst.instance_id] == [f"{LOCALHOST}:{inst.port}:{inst.port}"]
    assert published["prometheus"] == [f"{LOCALHOST}:{plan.infra.prometheus}:9090"]
    assert published["jaeger"] == [f"{LOCALHOST}:{plan.infra.jaeger_ui}:16686"]


# ---- environment --------------------------------------------------------------------------------
def _expected_hosts(plan: Plan) -> dict[int, str]:
    hosts: dict[int, str] = {}
    for inst in plan.instances:
        hosts[inst.port] = f"{inst.instance_id}:{inst.port}"
        hosts[inst.admin_port] = f"{inst.instance_id}:{inst.admin_port}"
    for proxy in plan.proxies:
        port = int(proxy.listen.rpartition(":")[2])
        hosts[port] = f"toxiproxy:{port}"
    hosts[plan.infra.jaeger_otlp_http] = "jaeger:4318"
    return hosts


def test_env_mirrors_the_embedded_plan_with_container_hostnames(
    doc: dict[str, Any], plan: Plan
) -> None:
    hosts = _expected_hosts(plan)
    for inst in plan.instances:
        env = doc["services"][inst.instance_id]["environment"]
        assert set(env) == set(inst.env)
        assert {k for k in env if k.startswith("TESTBED_")} >= {
            "TESTBED_SERVICE",
            "TESTBED_INSTANCE_ID",
            "TESTBED_PORT",
            "TESTBED_ADMIN_PORT",
            "TESTBED_ADVERTISE",
            "TESTBED_RUN_DIR",
        }
        for key, embedded in inst.env.items():
            if key == "TESTBED_HOST":
                assert env[key] == "0.0.0.0"
                continue
            expected = re.sub(
                re.escape(LOCALHOST) + r":(\d+)", lambda m: hosts[int(m.group(1))], embedded
            )
            assert env[key] == expected, (inst.instance_id, key)
            assert LOCALHOST not in env[key]
        assert env["TESTBED_RUN_DIR"] == RUN_DIR


def test_every_address_in_the_env_resolves_on_the_compose_network(
    doc: dict[str, Any], out: Path
) -> None:
    services = doc["services"]
    proxy_ports = {
        int(p["listen"].rpartition(":")[2])
        for p in json.loads((out / "toxiproxy.json").read_text())
    }
    checked = 0
    for name, service in services.items():
        if service.get("image") != compose.APP_IMAGE or "environment" not in service:
            continue
        for key, value in service["environment"].items():
            for part in re.split(r"[;,=]", value):
                match = _ADDRESS.match(part.strip())
                if match is None:
                    continue
                host, port = match.group(1), int(match.group(2))
                assert host in services, f"{name}: {key} names unknown host {host}"
                if host == "toxiproxy":
                    assert port in proxy_ports, f"{name}: {key}: no proxy listens on {port}"
                elif host == "jaeger":
                    assert port == 4318
                else:
                    own = services[host]["environment"]
                    assert port in (int(own["TESTBED_PORT"]), int(own["TESTBED_ADMIN_PORT"]))
                checked += 1
    assert checked > 40


def test_a_loopback_address_outside_the_stack_is_refused(default_topology: Topology) -> None:
    data = default_topology.to_data()
    data["components"]["orders"]["env"] = {"ORDERS_DB": "postgres://127.0.0.1:5432/x"}
    topo = parse_topology(yaml.safe_dump(data))
    plan = compose_plan(topo)
    with pytest.raises(ConfigError, match=r"ORDERS_DB.*127\.0\.0\.1:5432.*no part of the stack"):
        container_env(plan, plan.of("orders")[0])


# ---- Toxiproxy ----------------------------------------------------------------------------------
def test_proxies_mirror_the_embedded_ones(out: Path, plan: Plan, doc: dict[str, Any]) -> None:
    proxies = json.loads((out / "toxiproxy.json").read_text())
    assert [p["name"] for p in proxies] == [p.name for p in plan.proxies]
    for entry, embedded in zip(proxies, plan.proxies, strict=True):
        assert entry["listen"] == "0.0.0.0:" + embedded.listen.rpartition(":")[2]
        host, _, port = entry["upstream"].rpartition(":")
        assert host in doc["services"]
        assert port == embedded.upstream.rpartition(":")[2]
    toxics = json.loads((out / "toxics.json").read_text())
    latencies = {t["proxy"]: t["attributes"]["latency"] for t in toxics}
    assert latencies == {
        "cdn-sa-to-balancer": 120,
        "cdn-us-to-balancer": 20,
        "cdn-eu-to-balancer": 80,
    }


@pytest.fixture
def toxiproxy_server(tmp_path: Path, out: Path) -> Iterator[tuple[str, list[str]]]:
    """A real toxiproxy-server started with the generated toxiproxy.json (on free ports)."""
    try:
        binary = find_binary("toxiproxy-server", env_var="TESTBED_TOXIPROXY", hint=INSTALL_HINT)
    except ConfigError as exc:
        pytest.skip(str(exc))
    proxies = json.loads((out / "toxiproxy.json").read_text())
    for p in proxies:
        p["listen"] = f"{LOCALHOST}:{free_port()}"
        p["upstream"] = f"{LOCALHOST}:{free_port()}"
    config = tmp_path / "toxiproxy.json"
    config.write_text(json.dumps(proxies))
    port = free_port()
    log = (tmp_path / "toxiproxy.log").open("wb")
    proc = subprocess.Popen(
        [binary, "-host", LOCALHOST, "-port", str(port), "-config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://{LOCALHOST}:{port}", [p["name"] for p in proxies]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _toxics_job(url: str, toxics: Path) -> subprocess.CompletedProcess[str]:
    """The job as its container runs it: ``python -m management.compose toxics ...``."""
    return subprocess.run(
        [sys.executable, "-m", "management.compose", "toxics", "--toxiproxy", url, str(toxics)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


def test_toxiproxy_loads_the_config_and_the_toxics_job_adds_region_latency(
    toxiproxy_server: tuple[str, list[str]], out: Path
) -> None:
    url, names = toxiproxy_server
    job = _toxics_job(url, out / "toxics.json")
    assert job.returncode == 0, job.stdout + job.stderr
    assert set(_get_json(f"{url}/proxies")) == set(names)
    toxics = _get_json(f"{url}/proxies/cdn-eu-to-balancer/toxics")
    assert [(t["name"], t["type"], t["attributes"]["latency"]) for t in toxics] == [
        ("region_latency", "latency", 80)
    ]
    # Running the job twice (a restarted stack) replaces the toxic instead of failing.
    job = _toxics_job(url, out / "toxics.json")
    assert job.returncode == 0, job.stdout + job.stderr
    assert len(_get_json(f"{url}/proxies/cdn-eu-to-balancer/toxics")) == 1


def test_toxics_job_fails_clearly_without_a_file(tmp_path: Path) -> None:
    assert compose.main(["toxics", str(tmp_path / "missing.json")]) == 2


# ---- Prometheus, Jaeger -------------------------------------------------------------------------
def test_prometheus_config_passes_promtool_and_scrapes_every_instance(
    out: Path, plan: Plan
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make setup)")
    result = subprocess.run(
        [promtool, "check", "config", str(out / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((out / "prometheus.yml").read_text())
    scraped = {
        target: group["labels"]["instance"]
        for job in config["scrape_configs"]
        if job["job_name"] != "prometheus"
        for group in job["static_configs"]
        for target in group["targets"]
    }
    assert scraped == {f"{i.instance_id}:{i.port}": i.instance_id for i in plan.instances}
    assert config["global"]["scrape_interval"] == "1s"
    # The alert rules are loaded (promtool checked them with the config), evaluated every second.
    assert config["rule_files"] == ["alerts.yml"]
    assert config["global"]["evaluation_interval"] == "1s"
    assert "alert: InstanceDown" in (out / "alerts.yml").read_text()


def test_jaeger_config_validates() -> None:
    binary = REPO_ROOT / "tools" / "bin" / "jaeger"
    if not binary.is_file():
        pytest.skip("Jaeger is not built (make setup)")
    config = REPO_ROOT / "compose" / "jaeger.yaml"
    result = subprocess.run(
        [str(binary), "validate", f"--config={config}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- Grafana ------------------------------------------------------------------------------------
_NOT_METRICS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = _NOT_METRICS.sub(" ", e)
    e = re.sub(r"\$\w+", " ", e)
    return set(re.findall(r"\b[A-Za-z_:][A-Za-z0-9_:]*\b(?!\s*\()", e)) - {"and", "or", "unless"}


def test_metric_name_extraction() -> None:
    names = metric_names(
        'histogram_quantile(0.99, sum by (job, le) (rate(x_seconds_bucket{job=~"$job"}[1m])))'
        " / on (job) y_total > 0"
    )
    assert names == {"x_seconds_bucket", "y_total"}


def _source_text() -> str:
    skip = {"tests", "compose", ".venv", "tools", "runs", "build"}
    return "\n".join(
        path.read_text(encoding="utf-8")
        for path in REPO_ROOT.rglob("*.py")
        if not skip & set(path.relative_to(REPO_ROOT).parts)
    )


def test_dashboards_are_valid_and_every_metric_exists_in_the_code(out: Path) -> None:
    datasources = yaml.safe_load(
        (out / "grafana" / "provisioning" / "datasources" / "testbed.yaml").read_text()
    )
    uids = {d["uid"] for d in datasources["datasources"]}
    assert {d["type"] for d in datasources["datasources"]} == {"prometheus", "jaeger"}
    dashboards = sorted((out / "grafana" / "dashboards").glob("*.json"))
    assert [d.name for d in dashboards] == ["testbed-overview.json"]
    source = _source_text()
    used: set[str] = set()
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert dashboard["title"] == "Testbed overview"
        assert 36 <= dashboard["schemaVersion"] <= 41
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] in uids
                for target in panel["targets"]:
                    assert target["datasource"]["uid"] in uids
        for expr in _exprs(dashboard):
            for name in metric_names(expr):
                base = re.sub(r"_(bucket|count|sum)$", "", name)
                assert f'"{name}"' in source or f'"{base}"' in source, (
                    f"{path.name}: {name} in {expr!r} is not a metric of the code base"
                )
                used.add(base)
    assert {
        "http_server_requests_total",
        "http_server_request_duration_seconds",
        "cdn_cache_requests_total",
        "balancer_upstream_requests_total",
        "balancer_upstream_healthy",
        "balancer_upstream_ejections_total",
        "rpc_client_retries_total",
        "rpc_client_breaker_state",
        "rpc_client_ejections_total",
        "testbed_faults_active",
    } <= used


def test_dashboard_queries_parse_as_promql(out: Path, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make setup)")
    dashboard = json.loads((out / "grafana" / "dashboards" / "testbed-overview.json").read_text())
    rules = [
        {
            "record": f"dashboard:expr_{i}",
            "expr": e.replace("$__rate_interval", "1m").replace("$job", ".+"),
        }
        for i, e in enumerate(_exprs(dashboard))
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_job_list_is_the_topologys_components(
    out: Path, default_topology: Topology
) -> None:
    dashboard = json.loads((out / "grafana" / "dashboards" / "testbed-overview.json").read_text())
    (variable,) = dashboard["templating"]["list"]
    assert variable["query"].split(",") == list(default_topology.components)


# ---- committed files, CLI -----------------------------------------------------------------------
def test_committed_compose_folder_equals_a_fresh_render(default_topology: Topology) -> None:
    folder = REPO_ROOT / "compose"
    fresh = compose_files(default_topology, ComposeLayout.for_out_dir(folder, REPO_ROOT))
    for relative, text in fresh.items():
        path = folder / relative
        assert path.is_file(), f"compose/{relative} is missing: run `testbed compose`"
        assert path.read_text(encoding="utf-8") == text, (
            f"compose/{relative} differs from the topology: run `testbed compose`"
        )
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {
        "README.md"
    }
    assert on_disk == set(fresh), "compose/ holds files `testbed compose` does not write"


def test_image_installs_every_package_pyproject_ships() -> None:
    import tomllib

    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    include = data["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p.rstrip("*") for p in include) == sorted(compose.PACKAGES)
    dockerfile = (REPO_ROOT / "compose" / "Dockerfile").read_text()
    assert dockerfile.startswith("# Generated")
    assert "FROM python:3.11-slim" in dockerfile
    assert "RUN pip install ." in dockerfile


def test_cli_writes_the_files(tmp_path: Path) -> None:
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["compose", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "wrote 11 files" in result.output
    assert (tmp_path / "c" / "docker-compose.yaml").is_file()
    assert (tmp_path / "c" / "grafana" / "dashboards" / "testbed-overview.json").is_file()
    assert time.monotonic() - started < 60


def test_default_out_dir_is_the_checkouts_compose_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert compose.default_out_dir() == REPO_ROOT / "compose"
    monkeypatch.setattr(compose, "repo_root", lambda: None)
    monkeypatch.chdir(tmp_path)
    assert compose.default_out_dir() == tmp_path / "compose-out"


def test_outside_a_checkout_the_source_is_asked_for(tmp_path: Path) -> None:
    layout = ComposeLayout.for_out_dir(tmp_path, None)
    files = compose_files(load_topology(None), layout)
    doc = yaml.safe_load(files["docker-compose.yaml"])
    build = doc["services"]["catalog-1"]["build"]
    assert build["context"].startswith("${TESTBED_SOURCE:?")
    assert doc["services"]["locust"]["volumes"][0].startswith("${TESTBED_SOURCE:?")
