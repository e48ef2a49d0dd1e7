"""From a topology to a launch plan: every process, its ports, env and Toxiproxy proxies.

Every port comes from one place, the base port ``B`` (``--base-port`` / ``TESTBED_BASE_PORT``):

``B+0`` Toxiproxy API, ``B+1`` Prometheus, ``B+2`` Jaeger UI, ``B+3`` Jaeger OTLP/HTTP,
``B+4`` Jaeger OTLP/gRPC, ``B+5`` Jaeger query gRPC, ``B+6`` Zipkin (the trace UI),
``B+7..B+9`` reserved; then component ``i`` (its order in the
topology) owns the block ``B + 10 + 30*i`` of ``MAX_INSTANCES`` slots, three ports each:
instance ``k`` listens on ``block + 3*(k-1)`` (public) and ``+1`` (admin); ``+2`` is its
Toxiproxy proxy (services, gateways) or its PoP's link to the origin (CDN). Scaling up uses the
next slots, so ports of running instances never move and two stacks with base ports at least
``span`` apart never collide.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from management.topology import MAX_INSTANCES, Topology
from mesh.errors import ConfigError

__all__ = [
    "CANARY_SUFFIX",
    "DEFAULT_BASE_PORT",
    "CanaryPlan",
    "InfraPorts",
    "InstancePlan",
    "Plan",
    "ProxyPlan",
    "build_plan",
    "port_span",
    "spare_admin_port",
]

DEFAULT_BASE_PORT = 20000
_INFRA = 10
_SLOT = 3
_BLOCK = _SLOT * MAX_INSTANCES
LOCALHOST = "127.0.0.1"
CDN_ORIGIN_ENV = "CDN_ORIGIN_URL"


CANARY_SUFFIX = "-canary"
"""A canary's instance id is its component's name and this (``payments-canary``)."""


@dataclass(frozen=True)
class CanaryPlan:
    """One extra instance of a service at another version, taking ``share`` of its traffic
    (``testbed deploy --canary``). It uses the component's last instance slot."""

    version: str
    share: float


def port_span(component_count: int) -> int:
    """How many consecutive ports a stack with this many components may use."""
    return _INFRA + _BLOCK * component_count


@dataclass(frozen=True)
class InfraPorts:
    toxiproxy: int
    prometheus: int
    jaeger_ui: int
    jaeger_otlp_http: int
    jaeger_otlp_grpc: int
    zipkin: int

    @classmethod
    def from_base(cls, base: int) -> InfraPorts:
        return cls(base, base + 1, base + 2, base + 3, base + 4, base + 6)


@dataclass(frozen=True)
class ProxyPlan:
    """One Toxiproxy proxy: ``listen`` forwards to ``upstream``; ``latency_ms`` adds a toxic."""

    name: str
    listen: str
    upstream: str
    latency_ms: float = 0.0
    jitter_ms: float = 0.0


@dataclass(frozen=True)
class InstancePlan:
    """One process to run."""

    component: str
    kind: str
    index: int
    instance_id: str
    module: str
    port: int
    admin_port: int
    proxy_port: int | None
    advertise: str
    version: str
    registers: bool
    region: str | None
    env: Mapping[str, str] = field(compare=False)

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def command(self) -> tuple[str, ...]:
        return (sys.executable, "-m", self.module)


@dataclass(frozen=True)
class Plan:
    """Everything ``testbed up`` starts, derived from one topology, base port and run folder."""

    topology: Topology
    base_port: int
    run_dir: Path
    infra: InfraPorts
    instances: tuple[InstancePlan, ...]
    proxies: tuple[ProxyPlan, ...]
    registry_url: str | None
    jaeger: bool
    trace_ui: bool = False
    """Zipkin and its span shipper run (``management.trace_ui``)."""

    def of(self, component: str) -> tuple[InstancePlan, ...]:
        return tuple(i for i in self.instances if i.component == component)

    def instance(self, instance_id: str) -> InstancePlan:
        for inst in self.instances:
            if inst.instance_id == instance_id:
                return inst
        raise ConfigError(f"no instance {instance_id!r} in this stack")

    def ports(self) -> dict[int, str]:
        """Every port the stack listens on now, with what it is for."""
        ports = {
            self.infra.toxiproxy: "Toxiproxy API",
            self.infra.prometheus: "Prometheus",
        }
        if self.jaeger:
            ports[self.infra.jaeger_ui] = "Jaeger UI"
            ports[self.infra.jaeger_otlp_http] = "Jaeger OTLP/HTTP"
            ports[self.infra.jaeger_otlp_grpc] = "Jaeger OTLP/gRPC"
        if self.trace_ui:
            ports[self.infra.zipkin] = "Zipkin (trace UI)"
        for inst in self.instances:
            ports[inst.port] = inst.instance_id
            ports[inst.admin_port] = f"{inst.instance_id} admin"
        for proxy in self.proxies:
            ports[int(proxy.listen.rpartition(":")[2])] = f"Toxiproxy proxy {proxy.name}"
        return ports

    @property
    def span(self) -> int:
        return port_span(len(self.topology.components))


def spare_admin_port(inst: InstancePlan) -> int:
    """An admin port for a temporary successor of ``inst`` (``testbed deploy`` of a single
    instance): the admin port of its component's last slot, which a component whose instance
    count is fixed (balancer, CDN) never uses."""
    return inst.admin_port + _SLOT * (MAX_INSTANCES - inst.index)


def _slot(base: int, component_index: int, k: int) -> tuple[int, int, int]:
    start = base + _INFRA + _BLOCK * component_index + _SLOT * (k - 1)
    return start, start + 1, start + 2


def build_plan(
    topology: Topology,
    *,
    base_port: int,
    run_dir: Path,
    jaeger: bool = False,
    extra_env: Mapping[str, str] | None = None,
    admin_token: str | None = None,
    trace_ui: bool = False,
    canaries: Mapping[str, CanaryPlan] | None = None,
) -> Plan:
    """Derive the processes, proxies and ports of ``topology`` at ``base_port``.

    ``canaries`` adds one instance per named component at its version (the canary's, in the
    component's last slot), with ``TESTBED_CANARY_SHARE``; never in the static upstream lists.

    ``admin_token`` (``TESTBED_ADMIN_TOKEN`` of every process) is the run's secret; without
    one the processes keep their default, which they accept on loopback only.
    """
    top = base_port + port_span(len(topology.components)) - 1
    if base_port < 1024 or top > 65535:
        raise ConfigError(
            f"base port {base_port} does not fit: the stack needs ports {base_port}-{top}, "
            "which must lie within 1024-65535"
        )
    run_dir = run_dir.resolve()
    infra = InfraPorts.from_base(base_port)
    names = list(topology.components)

    # First pass: where each instance listens and what it advertises.
    slots: dict[str, list[tuple[int, int, int, str | None]]] = {}
    for ci, name in enumerate(names):
        comp = topology.components[name]
        regions: list[str | None] = list(comp.regions or ()) if comp.kind == "cdn" else []
        count = topology.instance_count(name)
        slots[name] = []
        for k in range(1, count + 1):
            port, admin, proxy = _slot(base_port, ci, k)
            slots[name].append((port, admin, proxy, regions[k - 1] if regions else None))
    canary_slots = {
        name: _slot(base_port, names.index(name), MAX_INSTANCES) for name in canaries or {}
    }

    def advertised(name: str, port: int, proxy: int) -> str:
        return f"{LOCALHOST}:{proxy if topology.is_proxied(name) else port}"

    registry = topology.registry_name()
    registry_url = f"http://{LOCALHOST}:{slots[registry][0][0]}" if registry else None

    instances: list[InstancePlan] = []
    proxies: list[ProxyPlan] = []
    for name in names:
        comp = topology.components[name]
        upstreams = topology.upstreams_of(name)
        # A monolith upstream stands for every service it hosts, all at its address.
        static = ";".join(
            f"{service}=" + ",".join(advertised(up, p, x) for p, _, x, _ in slots[up])
            for up in upstreams
            if slots[up]
            for service in topology.services_of(up)
        )
        canary = (canaries or {}).get(name)
        runs: list[tuple[int, tuple[int, int, int, str | None]]] = list(
            enumerate(slots[name], start=1)
        )
        if canary is not None:
            runs.append((MAX_INSTANCES, (*canary_slots[name], None)))
        for k, (port, admin, proxy, region) in runs:
            is_canary = canary is not None and k == MAX_INSTANCES
            version = (
                canary.version if canary is not None and is_canary else topology.version_of(name)
            )
            instance_id = (
                f"{name}{CANARY_SUFFIX}"
                if is_canary
                else (f"{name}-{region}" if region else f"{name}-{k}")
            )
            env: dict[str, str] = {
                "TESTBED_SERVICE": name,
                "TESTBED_INSTANCE_ID": instance_id,
                "TESTBED_HOST": LOCALHOST,
                "TESTBED_PORT": str(port),
                "TESTBED_ADMIN_PORT": str(admin),
                "TESTBED_ADVERTISE": advertised(name, port, proxy),
                "TESTBED_VERSION": version,
                "TESTBED_RUN_DIR": str(run_dir),
                "TESTBED_RESILIENCE": topology.resilience_of(name),
                "TESTBED_CONSISTENCY": topology.consistency_of(name),
                "TESTBED_LOG_FORMAT": "json",
                "TESTBED_LOG_LEVEL": topology.defaults.log_level,
                "TESTBED_DRAIN_SECONDS": f"{topology.defaults.drain_seconds:g}",
                "PYTHONUNBUFFERED": "1",
            }
            if admin_token is not None:
                env["TESTBED_ADMIN_TOKEN"] = admin_token
            if canary is not None and is_canary:
                env["TESTBED_CANARY_SHARE"] = f"{canary.share:g}"
            if static:
                env["TESTBED_UPSTREAMS"] = static
            per_try = topology.per_try_timeouts_of(name)
            if per_try:
                env["TESTBED_PER_TRY_TIMEOUT_MS"] = ",".join(
                    f"{target}={ms}" for target, ms in sorted(per_try.items())
                )
            overrides = topology.resilience_overrides_of(name)
            if overrides:
                env["TESTBED_RESILIENCE_OVERRIDES"] = ",".join(
                    f"{target}={profile}" for target, profile in sorted(overrides.items())
                )
            if registry_url and comp.kind != "registry":
                env["TESTBED_REGISTRY_URL"] = registry_url
            if comp.kind == "balancer":
                # Our own hops (the PoPs, through their Toxiproxy proxies) reach it on
                # loopback: the only peers whose hash header it believes (edge.front.trust).
                env["BALANCER_TRUSTED_PEERS"] = f"{LOCALHOST}/32"
            if comp.kind == "monolith":
                env["MONOLITH_SERVICES"] = ",".join(comp.hosts or ())
            if comp.kind == "registry":
                env["REGISTRY_DEFAULT_TTL"] = f"{topology.defaults.registry_ttl_seconds:g}"
            if jaeger:
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{LOCALHOST}:{infra.jaeger_otlp_http}"
            if region is not None:
                env["TESTBED_REGION"] = region
                env[CDN_ORIGIN_ENV] = f"http://{LOCALHOST}:{proxy}"
                (origin,) = upstreams
                origin_port = slots[origin][0][0]
                hash_header = topology.components[origin].env.get("BALANCER_HASH_HEADER")
                if hash_header:  # the PoP sets it (to the client's address), never the client
                    env["CDN_HASH_HEADER"] = hash_header
                latency = topology.regions[region]
                proxies.append(
                    ProxyPlan(
                        name=f"{instance_id}-to-{origin}",
                        listen=f"{LOCALHOST}:{proxy}",
                        upstream=f"{LOCALHOST}:{origin_port}",
                        latency_ms=latency.latency_ms,
                        jitter_ms=latency.jitter_ms,
                    )
                )
            elif topology.is_proxied(name):
                proxies.append(
                    ProxyPlan(
                        name=instance_id,
                        listen=f"{LOCALHOST}:{proxy}",
                        upstream=f"{LOCALHOST}:{port}",
                    )
                )
            env.update(extra_env or {})
            env.update(comp.env)
            instances.append(
                InstancePlan(
                    component=name,
                    kind=comp.kind,
                    index=k,
                    instance_id=instance_id,
                    module=topology.module_of(name),
                    port=port,
                    admin_port=admin,
                    proxy_port=proxy if (region or topology.is_proxied(name)) else None,
                    advertise=env["TESTBED_ADVERTISE"],
                    version=version,
                    registers=topology.registers(name),
                    region=region,
                    env=env,
                )
            )
    return Plan(
        topology=topology,
        base_port=base_port,
        run_dir=run_dir,
        infra=infra,
        instances=tuple(instances),
        proxies=tuple(proxies),
        registry_url=registry_url,
        jaeger=jaeger,
        trace_ui=trace_ui,
    )
