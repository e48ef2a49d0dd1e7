"""The compose way of running the system: Docker Compose files generated from the topology.

``render_compose(topology, out_dir=...)`` writes everything ``docker compose up`` needs:

``docker-compose.yaml``   one service per component instance (``python -m <module>`` in the
                          project's image), plus Toxiproxy, Jaeger, Prometheus, Grafana, Locust
``Dockerfile``            the project's image (``python:3.11-slim``, ``pip install .``)
``toxiproxy.json``        the proxies, in Toxiproxy's ``-config`` format (name, listen, upstream)
``toxics.json``           the toxics a one-shot job adds once Toxiproxy is up (region latency)
``jaeger.yaml``           Jaeger v2 (in-memory) listening on the container network
``prometheus.yml``        one scrape job per component, every container's ``/metrics``
``grafana/...``           provisioned datasources (Prometheus, Jaeger) and the overview dashboard

Nothing is written by hand twice: the embedded launch plan (``management.plan.build_plan``) is
built first and then moved into containers. Every instance keeps the ports and the environment
the plan gives it; only the places change: ``127.0.0.1:<port>`` becomes ``<container>:<port>``
(the instance's own container, or ``toxiproxy`` for a proxy port, or ``jaeger`` for OTLP),
instances listen on ``0.0.0.0`` and the run folder is a volume shared by all instances (the
instances of one service share their SQLite database, as they do embedded). The proxies keep
their embedded names, so chaos experiments name the same things in both ways of running.

Toxiproxy's config file holds proxies only (toxics are an API call), hence the small
``python -m management.compose toxics`` job: it is the same ``ToxiproxyClient.set_latency``
the embedded stack calls after start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from management.alerting import alert_rules
from management.dashboards import grafana_dashboard
from management.jaeger import jaeger_config
from management.plan import DEFAULT_BASE_PORT, LOCALHOST, InstancePlan, Plan, build_plan
from management.prometheus import RULES_NAME, target_groups
from management.prometheus import prometheus_config as embedded_prometheus_config
from management.topology import Topology
from management.toxiproxy import ToxiproxyClient, ToxiproxyError
from mesh.errors import ConfigError

__all__ = [
    "APP_IMAGE",
    "IMAGES",
    "PACKAGES",
    "RUN_DIR",
    "ComposeLayout",
    "apply_toxics",
    "compose_document",
    "compose_files",
    "compose_plan",
    "container_env",
    "default_out_dir",
    "grafana_dashboard_provider",
    "grafana_datasources",
    "jaeger_config",
    "main",
    "overview_dashboard",
    "prometheus_config",
    "render_compose",
    "repo_root",
    "toxiproxy_config",
]

IMAGES: Mapping[str, str] = {
    "python": "python:3.11-slim",
    "toxiproxy": "ghcr.io/shopify/toxiproxy:2.12.0",
    # scripts/setup.sh builds Jaeger v1.75.0 for the embedded stack; Jaeger tags every release
    # twice (v1.75.0 / v2.12.0, one commit) and the `jaegertracing/jaeger` image is the v2 line
    # (the v1 images are all-in-one and friends), so 2.12.0 is the same Jaeger as embedded.
    "jaeger": "jaegertracing/jaeger:2.12.0",
    # The last 2.x release: the same major version as Debian's prometheus/promtool (2.42) that
    # runs the embedded stack and validates the generated prometheus.yml in the tests.
    "prometheus": "prom/prometheus:v2.55.1",
    "grafana": "grafana/grafana:11.6.0",
    # The Locust the project pins and tests its locustfile with (pyproject: locust>=2.32,<3).
    "locust": "locustio/locust:2.47.0",
}
APP_IMAGE = "testbed:local"
"""The tag of the project's image, built from the generated Dockerfile."""
PACKAGES = ("services", "edge", "mesh", "management", "observability", "chaos", "load")
"""The top-level packages the image installs (pyproject's ``packages.find`` ``include``)."""
RUN_DIR = "/var/lib/testbed"
"""The run folder inside every app container: a named volume shared by all instances."""
RUN_VOLUME = "testbed-run"
TOXIPROXY_API = "http://toxiproxy:8474"
JAEGER_OTLP_HTTP = 4318
JAEGER_OTLP_GRPC = 4317
JAEGER_UI = 16686
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
LOCUST_PORT = 8089
PROMETHEUS_UID = "prometheus"
JAEGER_UID = "jaeger"
DASHBOARD_UID = "testbed-overview"
LOCUSTFILE = "load/locustfile.py"
_LOCUST_HOME = "/home/locust"
_ADDRESS = re.compile(re.escape(LOCALHOST) + r":(\d+)")
_PROJECT_NAME = re.compile(r"[^a-z0-9_-]+")
ADMIN_TOKEN_ENV = "TESTBED_ADMIN_TOKEN"
ADMIN_TOKEN_REFERENCE = (
    "${TESTBED_ADMIN_TOKEN:?set TESTBED_ADMIN_TOKEN to a secret for the admin APIs "
    "(see compose/README.md)}"
)
_NOT_IN_CONTAINERS = frozenset(
    {
        ADMIN_TOKEN_ENV,  # from compose's environment instead, see above
        # The PoPs reach the balancer from addresses of the compose network, not loopback:
        # with no trusted peers it believes no hash header (edge.front.trust).
        "BALANCER_TRUSTED_PEERS",
    }
)
_NOTICE = "Generated by `testbed compose` from the topology {name!r}; edit the topology, not this."


# ---- where things are ----------------------------------------------------------------------------
def repo_root() -> Path | None:
    """The source checkout this package runs from, if it runs from one (editable install)."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "management" / "compose.py").is_file():
        return root
    return None


def default_out_dir() -> Path:
    """``compose/`` of the checkout when running from one, else ``./compose-out``."""
    root = repo_root()
    return root / "compose" if root is not None else Path.cwd() / "compose-out"


@dataclass(frozen=True, kw_only=True)
class ComposeLayout:
    """Where the compose file finds the source tree (build context, ``load/``) and Dockerfile.

    ``source`` is as the compose file writes it: relative to the compose file's folder, or a
    ``${TESTBED_SOURCE:?...}`` reference when the files are generated outside a checkout.
    ``dockerfile`` is relative to ``source`` (or absolute).
    """

    source: str
    dockerfile: str

    @classmethod
    def for_out_dir(cls, out_dir: Path, root: Path | None) -> ComposeLayout:
        out = out_dir.resolve()
        if root is None:
            return cls(
                source="${TESTBED_SOURCE:?set TESTBED_SOURCE to a testbed source checkout}",
                dockerfile=str(out / "Dockerfile"),
            )
        return cls(
            source=Path(os.path.relpath(root, out)).as_posix(),
            dockerfile=Path(os.path.relpath(out / "Dockerfile", root)).as_posix(),
        )


# ---- the plan, moved into containers ------------------------------------------------------------
def compose_plan(topology: Topology) -> Plan:
    """The embedded plan the compose files are derived from (default ports, container run dir)."""
    return build_plan(
        topology, base_port=DEFAULT_BASE_PORT, run_dir=Path(RUN_DIR), jaeger=True, extra_env=None
    )


def _owners(plan: Plan) -> dict[int, str]:
    """Every embedded port, mapped to the ``host:port`` that serves it on the compose network."""
    owners: dict[int, str] = {}
    for inst in plan.instances:
        owners[inst.port] = f"{inst.instance_id}:{inst.port}"
        owners[inst.admin_port] = f"{inst.instance_id}:{inst.admin_port}"
    for proxy in plan.proxies:
        port = _port_of(proxy.listen)
        owners[port] = f"toxiproxy:{port}"
    owners[plan.infra.jaeger_otlp_http] = f"jaeger:{JAEGER_OTLP_HTTP}"
    owners[plan.infra.jaeger_otlp_grpc] = f"jaeger:{JAEGER_OTLP_GRPC}"
    return owners


def _port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def _translate(value: str, owners: Mapping[int, str], where: str) -> str:
    def swap(match: re.Match[str]) -> str:
        port = int(match.group(1))
        found = owners.get(port)
        if found is None:
            raise ConfigError(
                f"{where} points at {match.group(0)}, which is no part of the stack; inside a "
                "container 127.0.0.1 is the container itself"
            )
        return found

    return _ADDRESS.sub(swap, value)


def container_env(plan: Plan, inst: InstancePlan) -> dict[str, str]:
    """The instance's embedded environment with container hostnames instead of 127.0.0.1,
    and the admin token taken from the environment compose runs in (never a default: the
    admin APIs listen on the containers' network); loopback trust is not carried over."""
    owners = _owners(plan)
    env: dict[str, str] = {}
    for key, value in inst.env.items():
        if key == "TESTBED_HOST":
            env[key] = "0.0.0.0"
            continue
        if key in _NOT_IN_CONTAINERS:
            continue
        env[key] = _translate(value, owners, f"{inst.instance_id}: {key}={value}")
    env[ADMIN_TOKEN_ENV] = ADMIN_TOKEN_REFERENCE
    return env


def _dependencies(topology: Topology) -> dict[str, list[str]]:
    """Component -> the upstream components it waits for, dropping links that close a cycle."""
    deps: dict[str, list[str]] = {name: [] for name in topology.components}

    def reaches(start: str, goal: str) -> bool:
        stack, seen = [start], {start}
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            for nxt in deps[node]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    for link in topology.links:
        if link.target not in deps[link.source] and not reaches(link.target, link.source):
            deps[link.source].append(link.target)
    return deps


# ---- services -----------------------------------------------------------------------------------
def _healthcheck(port: int) -> dict[str, Any]:
    probe = (
        "import sys, urllib.request; "
        f"sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=2)"
        ".status == 200 else 1)"
    )
    return {
        "test": ["CMD", "python", "-c", probe],
        "interval": "2s",
        "timeout": "3s",
        "retries": 5,
        "start_period": "30s",
    }


def _published(host_port: int, container_port: int) -> str:
    # Loopback only, as embedded: nothing of the testbed is reachable from other machines.
    return f"{LOCALHOST}:{host_port}:{container_port}"


def _build(layout: ComposeLayout) -> dict[str, str]:
    return {"context": layout.source, "dockerfile": layout.dockerfile}


def _instance_service(
    plan: Plan,
    inst: InstancePlan,
    layout: ComposeLayout,
    deps: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    topology = plan.topology
    depends: dict[str, dict[str, str]] = {}
    registry = topology.registry_name()
    if registry is not None and inst.component != registry:
        for reg in plan.of(registry):
            depends[reg.instance_id] = {"condition": "service_healthy"}
    for upstream in deps[inst.component]:
        # A CDN PoP reaches its origin through its own proxy, services through theirs.
        if topology.is_proxied(upstream) or inst.region is not None:
            depends["toxiproxy"] = {"condition": "service_healthy"}
        for up in plan.of(upstream):
            depends[up.instance_id] = {"condition": "service_healthy"}
    if inst.region is not None and _toxics(plan):
        # The region's latency is on the link before the PoP serves its first request.
        depends["toxiproxy-toxics"] = {"condition": "service_completed_successfully"}
    depends["jaeger"] = {"condition": "service_started"}
    service: dict[str, Any] = {
        "image": APP_IMAGE,
        "build": _build(layout),
        "command": ["python", "-m", inst.module],
        "environment": container_env(plan, inst),
        "volumes": [f"{RUN_VOLUME}:{RUN_DIR}"],
    }
    if inst.kind in ("cdn", "balancer"):
        service["ports"] = [_published(inst.port, inst.port)]
    service["healthcheck"] = _healthcheck(inst.port)
    service["depends_on"] = depends
    service["restart"] = "unless-stopped"
    service["stop_grace_period"] = f"{topology.defaults.drain_seconds + 5:g}s"
    return service


def _infra_services(plan: Plan, layout: ComposeLayout) -> dict[str, dict[str, Any]]:
    pops = [i for i in plan.instances if i.region is not None]
    services: dict[str, dict[str, Any]] = {
        "toxiproxy": {
            "image": IMAGES["toxiproxy"],
            "command": ["-host=0.0.0.0", "-config=/etc/toxiproxy/toxiproxy.json"],
            "volumes": ["./toxiproxy.json:/etc/toxiproxy/toxiproxy.json:ro"],
            # The image is FROM scratch: its own CLI is the only probe available.
            "healthcheck": {
                "test": ["CMD", "/toxiproxy-cli", "list"],
                "interval": "2s",
                "timeout": "3s",
                "retries": 10,
            },
            "restart": "unless-stopped",
        },
    }
    if _toxics(plan):
        services["toxiproxy-toxics"] = {
            "image": APP_IMAGE,
            "build": _build(layout),
            "command": [
                "python",
                "-m",
                "management.compose",
                "toxics",
                "--toxiproxy",
                TOXIPROXY_API,
                "/etc/testbed/toxics.json",
            ],
            "volumes": ["./toxics.json:/etc/testbed/toxics.json:ro"],
            "depends_on": {"toxiproxy": {"condition": "service_healthy"}},
            "restart": "no",
        }
    services["jaeger"] = {
        "image": IMAGES["jaeger"],
        "command": ["--config=/etc/jaeger/config.yaml"],
        # As embedded: Jaeger would otherwise trace itself into its own receiver.
        "environment": {"OTEL_TRACES_EXPORTER": "none", "OTEL_SDK_DISABLED": "true"},
        "volumes": ["./jaeger.yaml:/etc/jaeger/config.yaml:ro"],
        "ports": [_published(plan.infra.jaeger_ui, JAEGER_UI)],
        "restart": "unless-stopped",
    }
    services["prometheus"] = {
        "image": IMAGES["prometheus"],
        "command": [
            "--config.file=/etc/prometheus/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=0.0.0.0:{PROMETHEUS_PORT}",
        ],
        "volumes": [
            "./prometheus.yml:/etc/prometheus/prometheus.yml:ro",
            f"./{RULES_NAME}:/etc/prometheus/{RULES_NAME}:ro",
        ],
        "ports": [_published(plan.infra.prometheus, PROMETHEUS_PORT)],
        "restart": "unless-stopped",
    }
    services["grafana"] = {
        "image": IMAGES["grafana"],
        "environment": {
            "GF_AUTH_ANONYMOUS_ENABLED": "true",
            "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
            "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": "/var/lib/grafana/dashboards/"
            "testbed-overview.json",
            "GF_ANALYTICS_REPORTING_ENABLED": "false",
        },
        "volumes": [
            "./grafana/provisioning:/etc/grafana/provisioning:ro",
            "./grafana/dashboards:/var/lib/grafana/dashboards:ro",
        ],
        "ports": [_published(GRAFANA_PORT, GRAFANA_PORT)],
        "depends_on": {
            "prometheus": {"condition": "service_started"},
            "jaeger": {"condition": "service_started"},
        },
        "restart": "unless-stopped",
    }
    if pops:
        pop_urls = ",".join(f"{p.region}=http://{p.instance_id}:{p.port}" for p in pops)
        services["locust"] = {
            "image": IMAGES["locust"],
            "command": [
                "-f",
                f"{_LOCUST_HOME}/{LOCUSTFILE}",
                "--host",
                f"http://{pops[0].instance_id}:{pops[0].port}",
                f"--web-port={LOCUST_PORT}",
                f"--tb-pops={pop_urls}",
            ],
            # The locustfile imports load.shapes: mount the package, not only the file.
            "environment": {"PYTHONPATH": _LOCUST_HOME},
            "volumes": [f"{layout.source}/load:{_LOCUST_HOME}/load:ro"],
            "ports": [_published(LOCUST_PORT, LOCUST_PORT)],
            "depends_on": {p.instance_id: {"condition": "service_healthy"} for p in pops},
        }
    return services


def _project_name(topology: Topology) -> str:
    name = _PROJECT_NAME.sub("-", topology.name.lower()).strip("-_")
    return f"testbed-{name}" if name and name != "testbed" else "testbed"


def compose_document(plan: Plan, layout: ComposeLayout) -> dict[str, Any]:
    deps = _dependencies(plan.topology)
    services = _infra_services(plan, layout)
    instances = {
        inst.instance_id: _instance_service(plan, inst, layout, deps) for inst in plan.instances
    }
    clash = set(instances) & set(services)
    if clash:
        raise ConfigError(
            f"instance names {', '.join(sorted(clash))} clash with the compose infrastructure"
        )
    return {
        "name": _project_name(plan.topology),
        "services": {**instances, **services},
        "volumes": {RUN_VOLUME: {}},
    }


# ---- Toxiproxy ----------------------------------------------------------------------------------
def toxiproxy_config(plan: Plan) -> list[dict[str, Any]]:
    """The embedded proxies (same names), listening in the toxiproxy container."""
    owners = _owners(plan)
    return [
        {
            "name": p.name,
            "listen": f"0.0.0.0:{_port_of(p.listen)}",
            "upstream": _translate(p.upstream, owners, f"proxy {p.name}"),
            "enabled": True,
        }
        for p in plan.proxies
    ]


def _toxics(plan: Plan) -> list[dict[str, Any]]:
    """The toxics the embedded stack adds after start-up (``ToxiproxyClient.populate``)."""
    return [
        {
            "proxy": p.name,
            "name": "region_latency",
            "type": "latency",
            "stream": "downstream",
            "toxicity": 1.0,
            "attributes": {"latency": int(p.latency_ms), "jitter": int(p.jitter_ms)},
        }
        for p in plan.proxies
        if p.latency_ms > 0
    ]


async def apply_toxics(toxiproxy_url: str, toxics: Sequence[Mapping[str, Any]]) -> None:
    """Add the latency toxics of ``toxics.json`` (waits up to 30 s for Toxiproxy's API)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        client = ToxiproxyClient(session, toxiproxy_url)
        deadline = time.monotonic() + 30.0
        while True:
            try:
                await client.version()
                break
            except ToxiproxyError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        for toxic in toxics:
            if toxic.get("type") != "latency":
                raise ConfigError(f"toxics.json: only latency toxics are supported, got {toxic}")
            attrs = toxic.get("attributes", {})
            await client.set_latency(
                str(toxic["proxy"]),
                float(attrs.get("latency", 0)),
                float(attrs.get("jitter", 0)),
                toxic=str(toxic.get("name", "latency")),
            )


# ---- Jaeger -------------------------------------------------------------------------------------
def compose_jaeger_config() -> dict[str, Any]:
    """Jaeger v2, in-memory, as embedded, but listening on the container network."""
    return jaeger_config(
        host="0.0.0.0", ui=JAEGER_UI, otlp_grpc=JAEGER_OTLP_GRPC, otlp_http=JAEGER_OTLP_HTTP
    )


# ---- Prometheus ---------------------------------------------------------------------------------
def prometheus_config(plan: Plan) -> dict[str, Any]:
    """The embedded scrape config with static targets on the compose network.

    Same jobs, intervals and target labels as ``management.prometheus`` (which uses file_sd so
    the embedded stack can scale live); here the targets are the instances' containers.
    """
    config = embedded_prometheus_config(plan, Path("/unused"), [RULES_NAME])
    owners = _owners(plan)
    for job in config["scrape_configs"]:
        if job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"localhost:{PROMETHEUS_PORT}"]}]
            continue
        groups = target_groups(plan, job["job_name"])
        for group in groups:
            group["targets"] = [
                _translate(t, owners, f"scrape target {t}") for t in group["targets"]
            ]
        del job["file_sd_configs"]
        job["static_configs"] = groups
    return config


# ---- Grafana ------------------------------------------------------------------------------------
def grafana_datasources() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "type": "prometheus",
                "uid": PROMETHEUS_UID,
                "access": "proxy",
                "url": f"http://prometheus:{PROMETHEUS_PORT}",
                "isDefault": True,
                "jsonData": {"timeInterval": "1s"},
                "editable": False,
            },
            {
                "name": "Jaeger",
                "type": "jaeger",
                "uid": JAEGER_UID,
                "access": "proxy",
                "url": f"http://jaeger:{JAEGER_UI}",
                "editable": False,
            },
        ],
    }


def grafana_dashboard_provider() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "testbed",
                "folder": "Testbed",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "options": {"path": "/var/lib/grafana/dashboards"},
            }
        ],
    }


def overview_dashboard(topology: Topology) -> dict[str, Any]:
    """The "Testbed overview" dashboard, from the one definition in ``management.dashboards``
    (the embedded stack's console page is rendered from it too).

    The ``job`` variable lists the topology's components (Prometheus' job per component).
    """
    return grafana_dashboard(
        uid=DASHBOARD_UID,
        title="Testbed overview",
        description=_NOTICE.format(name=topology.name),
        jobs=list(topology.components),
        datasource_uid=PROMETHEUS_UID,
    )


# ---- the files ----------------------------------------------------------------------------------
def _dockerfile() -> str:
    copies = "\n".join(f"COPY {pkg} {pkg}" for pkg in PACKAGES)
    return f"""\
# Generated by `testbed compose`.
# The image every testbed process runs in: `python -m <module>`, configured by environment.
# Build context: the source checkout (see docker-compose.yaml).
FROM {IMAGES["python"]}
ENV PYTHONUNBUFFERED=1 \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PIP_NO_CACHE_DIR=1 \\
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
{copies}
RUN pip install . \\
    && useradd --system --uid 10001 --user-group --home-dir {RUN_DIR} --create-home testbed
USER testbed
WORKDIR {RUN_DIR}
"""


_DOCKERIGNORE = """\
# Generated by `testbed compose`: what the image build never needs from the checkout.
.git
.venv
runs
tools
compose
compose-out
**/__pycache__
**/*.pyc
.mypy_cache
.ruff_cache
.pytest_cache
*.egg-info
"""


def _yaml(data: Any, header: str) -> str:
    body = yaml.safe_dump(data, sort_keys=False, width=4096, allow_unicode=True)
    return header + body


def compose_files(topology: Topology, layout: ComposeLayout) -> dict[str, str]:
    """Every generated file: its path (relative to the output folder) and its text."""
    plan = compose_plan(topology)
    notice = "# " + _NOTICE.format(name=topology.name) + "\n"
    run_hint = "# Run: docker compose -f <this file> up --build   (see README.md next to it)\n"
    files = {
        "docker-compose.yaml": _yaml(compose_document(plan, layout), notice + run_hint),
        "Dockerfile": _dockerfile(),
        "Dockerfile.dockerignore": _DOCKERIGNORE,
        "toxiproxy.json": json.dumps(toxiproxy_config(plan), indent=2) + "\n",
        "jaeger.yaml": _yaml(compose_jaeger_config(), notice),
        "prometheus.yml": _yaml(prometheus_config(plan), notice),
        RULES_NAME: _yaml(alert_rules(topology), notice),
        "grafana/provisioning/datasources/testbed.yaml": _yaml(grafana_datasources(), notice),
        "grafana/provisioning/dashboards/testbed.yaml": _yaml(grafana_dashboard_provider(), notice),
        "grafana/dashboards/testbed-overview.json": json.dumps(
            overview_dashboard(topology), indent=2, ensure_ascii=False
        )
        + "\n",
    }
    toxics = _toxics(plan)
    if toxics:
        files["toxics.json"] = json.dumps(toxics, indent=2) + "\n"
    return files


def render_compose(
    topology: Topology, *, out_dir: Path, source_root: Path | None = None
) -> list[Path]:
    """Write the compose files for ``topology`` into ``out_dir``; returns the paths written.

    ``source_root`` is the checkout the image is built from (default: this one, if the package
    runs from a checkout; otherwise the compose file asks for ``$TESTBED_SOURCE``).
    """
    layout = ComposeLayout.for_out_dir(out_dir, source_root or repo_root())
    written: list[Path] = []
    for relative, text in compose_files(topology, layout).items():
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written


# ---- python -m management.compose toxics ... ----------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``toxics --toxiproxy URL FILE``: the compose stack's one-shot toxics job."""
    parser = argparse.ArgumentParser(prog="python -m management.compose")
    sub = parser.add_subparsers(dest="command", required=True)
    toxics = sub.add_parser("toxics", help="add the toxics of a toxics.json to Toxiproxy")
    toxics.add_argument("--toxiproxy", default=TOXIPROXY_API, help="Toxiproxy API base URL")
    toxics.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        entries = json.loads(args.file.read_text(encoding="utf-8"))
        if not isinstance(entries, list):
            raise ConfigError(f"{args.file}: expected a JSON list of toxics")
        asyncio.run(apply_toxics(args.toxiproxy, entries))
    except (OSError, ValueError, ConfigError, ToxiproxyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"added {len(entries)} toxics to {args.toxiproxy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
