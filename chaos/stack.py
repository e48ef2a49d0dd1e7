"""What the chaos engine knows about the running stack: instances, proxies, links, addresses.

``StackInfo`` is the engine's own view, built from the management plane's state file in the run
folder (``from_state``) or directly by tests. Keeping one small typed view here means faults,
probes and rollback never parse management's file themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from management.stack import Stack
from management.supervisor import SupervisorError

__all__ = ["InstanceInfo", "LinkInfo", "StackInfo", "from_management"]


@dataclass(frozen=True)
class InstanceInfo:
    """One running instance of a component."""

    service: str
    instance_id: str
    address: str
    """``host:port`` where the process itself listens."""
    admin_address: str | None = None
    pid: int | None = None
    proxy: str | None = None
    """Name of the Toxiproxy proxy in front of it, if any."""
    supervisor_name: str | None = None
    """The process name under the supervisor (``group:name``), if supervised."""

    @property
    def admin_url(self) -> str | None:
        return f"http://{self.admin_address}" if self.admin_address else None

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@dataclass(frozen=True)
class LinkInfo:
    """A link between components that has its own Toxiproxy proxy (e.g. ``cdn-sa->balancer``)."""

    name: str
    source: str
    target: str
    proxy: str


@dataclass(frozen=True)
class StackInfo:
    run_dir: Path
    instances: tuple[InstanceInfo, ...] = ()
    links: tuple[LinkInfo, ...] = ()
    toxiproxy_url: str | None = None
    prometheus_url: str | None = None
    admin_token: str = "testbed-admin"
    urls: Mapping[str, str] = field(default_factory=dict)
    """Public addresses: ``balancer``, ``gateway``, ``pop:<region>`` -> base URL."""
    api_key: str | None = None
    resilience: Mapping[str, str] = field(default_factory=dict)
    consistency: Mapping[str, str] = field(default_factory=dict)
    instance_counts: Mapping[str, int] = field(default_factory=dict)
    hosted_by: Mapping[str, str] = field(default_factory=dict)
    """Service -> the monolith component running it (``kind: monolith`` topologies)."""

    def services(self) -> list[str]:
        return sorted({i.service for i in self.instances})

    def instances_of(self, service: str) -> list[InstanceInfo]:
        """The instances running ``service``: for a service hosted by a monolith, the
        monolith's (killing orders there is killing the whole shop)."""
        service = self.hosted_by.get(service, service)
        return sorted(
            (i for i in self.instances if i.service == service), key=lambda i: i.instance_id
        )

    def instance(self, instance_id: str) -> InstanceInfo | None:
        for i in self.instances:
            if i.instance_id == instance_id:
                return i
        return None

    def pops(self) -> dict[str, str]:
        return {k.removeprefix("pop:"): v for k, v in self.urls.items() if k.startswith("pop:")}

    def template_values(self) -> dict[str, str]:
        """Values for ``{balancer}``-style placeholders in probe URLs."""
        out = dict(self.urls)
        if self.prometheus_url:
            out["prometheus"] = self.prometheus_url
        if self.toxiproxy_url:
            out["toxiproxy"] = self.toxiproxy_url
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "toxiproxy": self.toxiproxy_url,
            "prometheus": self.prometheus_url,
            "urls": dict(self.urls),
            "instances": [
                {"id": i.instance_id, "service": i.service, "pid": i.pid, "proxy": i.proxy}
                for i in self.instances
            ],
            "links": [link.name for link in self.links],
        }


async def from_management(stack: Stack) -> StackInfo:
    """The engine's view of a stack the management plane runs (pids from its supervisord)."""
    try:
        procs = {p["name"]: p for p in await stack.supervisor.aprocesses()}
    except (SupervisorError, TimeoutError):
        procs = {}
    plan = stack.plan
    topo = plan.topology
    proxies = {p.name for p in plan.proxies}
    instances: list[InstanceInfo] = []
    links: list[LinkInfo] = []
    urls: dict[str, str] = {}
    api_key: str | None = None
    for inst in plan.instances:
        pid = int(procs.get(inst.instance_id, {}).get("pid") or 0) or None
        instances.append(
            InstanceInfo(
                service=inst.component,
                instance_id=inst.instance_id,
                address=inst.address,
                admin_address=f"127.0.0.1:{inst.admin_port}",
                pid=pid,
                proxy=inst.instance_id if inst.instance_id in proxies else None,
                supervisor_name=inst.instance_id,
            )
        )
        if inst.kind == "cdn" and inst.region:
            urls[f"pop:{inst.region}"] = inst.url
            for origin in topo.upstreams_of(inst.component):
                proxy = f"{inst.instance_id}-to-{origin}"
                if proxy in proxies:
                    links.append(
                        LinkInfo(f"{inst.instance_id}->{origin}", inst.component, origin, proxy)
                    )
        elif inst.kind in ("balancer", "gateway", "registry"):
            urls.setdefault(inst.kind, inst.url)
        if inst.kind == "gateway" and api_key is None:
            raw = inst.env.get("GATEWAY_API_KEYS", "demo-key:50:100")
            api_key = raw.split(",")[0].split(":")[0].strip() or None
    # Every name an experiment may use: components, and the services a monolith hosts
    # (which take the monolith's settings).
    served = {s: c for c in topo.components for s in topo.services_of(c)}
    served.update({c: c for c in topo.components})
    admin_token = next(
        (i.env["TESTBED_ADMIN_TOKEN"] for i in plan.instances if "TESTBED_ADMIN_TOKEN" in i.env),
        "testbed-admin",
    )
    return StackInfo(
        run_dir=stack.run_dir,
        instances=tuple(instances),
        links=tuple(links),
        toxiproxy_url=stack.toxiproxy_url,
        prometheus_url=stack.prometheus_url,
        admin_token=admin_token,
        urls=urls,
        api_key=api_key or "demo-key",
        resilience={s: topo.resilience_of(c) for s, c in served.items()},
        consistency={s: topo.consistency_of(c) for s, c in served.items()},
        instance_counts={s: topo.instance_count(c) for s, c in served.items()},
        hosted_by={s: c for s, c in served.items() if s != c},
    )
