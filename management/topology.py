"""The topology file: one YAML description of the whole system, validated on load.

A topology names every component (its kind, instance count, version, resilience profile,
consistency mode, extra environment), the links between components, and the regions with their
latencies. ``load_topology`` reads and validates it; an error names the file, the line and what
is wrong, e.g. ``topology.yaml:14:16: components.catalog.instances: must be >= 0``.

PyYAML's ``safe_load`` forgets where values came from, so the loader composes the node tree
first (each node carries its ``start_mark``), keeps a map from each value's path to its line,
and builds the Python data from the same nodes; pydantic then checks the schema and the
cross-references (links, regions) are checked here, each error mapped back to its line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from management.yamlfile import KEY, Marked, PathT, YamlFileError, load_marked
from mesh.errors import ConfigError

__all__ = [
    "KINDS",
    "MAX_INSTANCES",
    "Component",
    "Defaults",
    "Link",
    "Region",
    "Topology",
    "TopologyError",
    "default_topology_path",
    "load_topology",
    "parse_topology",
]

MAX_INSTANCES = 10
"""Instances per component: each component owns a fixed block of ports sized for this many."""

KINDS = ("registry", "service", "gateway", "balancer", "cdn", "process", "monolith")
HOSTABLE = ("catalog", "recommendations", "inventory", "payments", "orders")
"""The services a ``monolith`` component may host (``services.monolith.config.SERVICES``)."""
DEFAULT_MODULES: Mapping[str, str] = {
    "registry": "management.registry",
    "monolith": "services.monolith",
    "gateway": "edge.gateway",
    "balancer": "edge.balancer",
    "cdn": "edge.cdn",
}
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
LINK_FAULTS = ("latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "down")


class TopologyError(ConfigError):
    """The topology file is invalid; ``problems`` holds one ``file:line:col: path: what`` each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid topology:\n  " + "\n  ".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Region(_Model):
    """A region users come from; its CDN PoP's link to the origin carries this latency."""

    latency_ms: float = Field(ge=0, le=10_000)
    jitter_ms: float = Field(default=0, ge=0, le=10_000)


class Defaults(_Model):
    """Values every component inherits unless it sets its own."""

    version: str = "v1"
    resilience: Literal["none", "basic", "full"] = "full"
    consistency: Literal["saga", "naive"] = "saga"
    registry_ttl_seconds: float = Field(default=3.0, gt=0, le=300)
    drain_seconds: float = Field(default=2.0, ge=0, le=120)
    scrape_interval_seconds: float = Field(default=1.0, ge=1, le=2)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _VERSION.match(v):
            raise ValueError(f"{v!r} is not a version (letters, digits, '.', '_', '-')")
        return v


class Component(_Model):
    """One component of the system: a kind, a module to run, how many instances."""

    kind: Literal["registry", "service", "gateway", "balancer", "cdn", "process", "monolith"]
    module: str | None = None
    hosts: tuple[str, ...] | None = None
    instances: int = Field(default=1, ge=0, le=MAX_INSTANCES)
    version: str | None = None
    resilience: Literal["none", "basic", "full"] | None = None
    consistency: Literal["saga", "naive"] | None = None
    regions: tuple[str, ...] | None = None
    proxied: bool | None = None
    register_: bool | None = Field(default=None, alias="register")
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("module")
    @classmethod
    def _module(cls, v: str | None) -> str | None:
        if v is not None and not _MODULE.match(v):
            raise ValueError(f"{v!r} is not a Python module path like 'services.orders'")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        if v is not None and not _VERSION.match(v):
            raise ValueError(f"{v!r} is not a version (letters, digits, '.', '_', '-')")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name (A-Z, 0-9, _)")
        return v


class Link(_Model):
    """A call path ``from`` -> ``to``; ``faults`` lists what chaos may inject on it;
    ``resilience`` overrides the caller's profile for calls on this link only, and
    ``per_try_timeout_ms`` how long one try may take before a retry goes elsewhere."""

    source: str = Field(alias="from")
    target: str = Field(alias="to")
    resilience: Literal["none", "basic", "full"] | None = None
    per_try_timeout_ms: int | None = Field(default=None, gt=0, le=60_000)
    faults: tuple[Literal[LINK_FAULTS], ...] = ()  # type: ignore[valid-type]


class Topology(_Model):
    """The whole system. Build with ``load_topology``/``parse_topology`` (they check references)."""

    name: str = "testbed"
    regions: dict[str, Region] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    components: dict[str, Component]
    links: tuple[Link, ...] = ()

    # ---- derived views -------------------------------------------------------------------
    def module_of(self, name: str) -> str:
        c = self.components[name]
        if c.module:
            return c.module
        if c.kind == "service":
            return f"services.{name}"
        return DEFAULT_MODULES[c.kind]

    def version_of(self, name: str) -> str:
        return self.components[name].version or self.defaults.version

    def resilience_of(self, name: str) -> str:
        return self.components[name].resilience or self.defaults.resilience

    def per_try_timeouts_of(self, name: str) -> dict[str, int]:
        """Per-upstream per-try timeouts (ms) of component ``name``, from its links."""
        return {
            link.target: link.per_try_timeout_ms
            for link in self.links
            if link.source == name and link.per_try_timeout_ms is not None
        }

    def resilience_overrides_of(self, name: str) -> dict[str, str]:
        """Per-upstream profiles of component ``name``, from its links' ``resilience``."""
        return {
            link.target: link.resilience
            for link in self.links
            if link.source == name and link.resilience is not None
        }

    def consistency_of(self, name: str) -> str:
        return self.components[name].consistency or self.defaults.consistency

    def instance_count(self, name: str) -> int:
        c = self.components[name]
        return len(c.regions or ()) if c.kind == "cdn" else c.instances

    def is_proxied(self, name: str) -> bool:
        """Whether each instance sits behind its own Toxiproxy proxy (services, gateways)."""
        c = self.components[name]
        return c.proxied if c.proxied is not None else c.kind in ("service", "gateway", "monolith")

    def services_of(self, name: str) -> tuple[str, ...]:
        """The services component ``name`` serves: a monolith's ``hosts``, else its own name."""
        c = self.components[name]
        return tuple(c.hosts or ()) if c.kind == "monolith" else (name,)

    def host_of(self, service: str) -> str | None:
        """The monolith component hosting ``service``, or None."""
        for name, c in self.components.items():
            if c.kind == "monolith" and service in (c.hosts or ()):
                return name
        return None

    def registers(self, name: str) -> bool:
        """Whether instances register themselves in the registry (all but the registry)."""
        c = self.components[name]
        if self.registry_name() is None:
            return False
        return c.register_ if c.register_ is not None else c.kind != "registry"

    def registry_name(self) -> str | None:
        for name, c in self.components.items():
            if c.kind == "registry":
                return name
        return None

    def upstreams_of(self, name: str) -> tuple[str, ...]:
        return tuple(link.target for link in self.links if link.source == name)

    def with_instances(self, name: str, count: int) -> Topology:
        comp = self.components[name].model_copy(update={"instances": count})
        return self.model_copy(update={"components": {**self.components, name: comp}})

    def with_env(self, name: str, env: Mapping[str, str]) -> Topology:
        """The component's processes get ``env`` on top of their own settings."""
        comp = self.components[name]
        comp = comp.model_copy(update={"env": {**comp.env, **env}})
        return self.model_copy(update={"components": {**self.components, name: comp}})

    def with_version(self, name: str, version: str) -> Topology:
        if not _VERSION.match(version):
            raise ConfigError(f"{version!r} is not a version (letters, digits, '.', '_', '-')")
        comp = self.components[name].model_copy(update={"version": version})
        return self.model_copy(update={"components": {**self.components, name: comp}})

    def to_data(self) -> dict[str, Any]:
        """Plain data that ``parse_topology`` accepts again (used for the run's state file)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---- line-aware loading (management.yamlfile) ---------------------------------------------------
Path_ = PathT


def _pydantic_problems(exc: ValidationError, marked: Marked) -> Iterator[str]:
    for err in exc.errors(include_url=False):
        path: Path_ = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        msg = str(err["msg"])
        if err["type"] == "extra_forbidden":
            key_path = (*path[:-1], str(path[-1]))
            yield marked.problem(key_path, f"unknown field {path[-1]!r}", key=True)
            continue
        if err["type"] == "missing":
            yield marked.problem(path[:-1], f"field {path[-1]!r} is required")
            continue
        yield marked.problem(path, msg.removeprefix("Value error, "))


def _semantic_problems(topo: Topology) -> Iterator[tuple[Path_, str]]:
    names = topo.components
    registries = [n for n, c in names.items() if c.kind == "registry"]
    if len(registries) > 1:
        yield ("components", registries[1]), "only one component may be of kind 'registry'"
    for name, comp in names.items():
        if not _NAME.match(name):
            yield (
                ("components", name, KEY),
                f"component name {name!r} must be lower-case letters, digits, '-' or '_'",
            )
        if comp.kind == "process" and not comp.module:
            yield ("components", name), "a component of kind 'process' needs a 'module'"
        if comp.kind == "cdn":
            if not comp.regions:
                yield ("components", name), "a cdn needs 'regions' (one PoP per region)"
            for i, region in enumerate(comp.regions or ()):
                if region not in topo.regions:
                    known = ", ".join(topo.regions) or "none defined"
                    yield (
                        ("components", name, "regions", i),
                        f"unknown region {region!r} (regions: {known})",
                    )
            if comp.regions and len(set(comp.regions)) != len(comp.regions):
                yield ("components", name, "regions"), "a region is listed twice"
            origins = topo.upstreams_of(name)
            if len(origins) != 1:
                yield ("components", name), "a cdn needs exactly one link to its origin"
        elif comp.regions is not None:
            yield ("components", name, "regions"), "only a cdn has 'regions'"
        if comp.kind == "monolith":
            yield from _monolith_problems(topo, name, comp)
        elif comp.hosts is not None:
            yield ("components", name, "hosts"), "only a monolith has 'hosts'"
        if comp.kind in ("registry", "balancer") and comp.instances != 1:
            yield ("components", name, "instances"), f"a {comp.kind} runs exactly one instance"
    # Consistency is a property of the checkout saga, not of one service: with orders naive and
    # payments in saga mode, every charge is refused for lack of an idempotency key.
    for name, comp in names.items():
        if comp.kind in ("service", "monolith") and comp.consistency not in (
            None,
            topo.defaults.consistency,
        ):
            yield (
                ("components", name, "consistency"),
                f"every service runs one consistency mode ({topo.defaults.consistency!r} here): "
                "set defaults.consistency to change it for all of them",
            )
    seen: set[tuple[str, str]] = set()
    for i, link in enumerate(topo.links):
        for end, value in (("from", link.source), ("to", link.target)):
            if value not in names and topo.host_of(value) is None:
                yield ("links", i, end), f"unknown component {value!r}"
        if link.source == link.target:
            yield ("links", i), "a link cannot point to its own component"
        if (link.source, link.target) in seen:
            yield ("links", i), f"link {link.source} -> {link.target} is listed twice"
        seen.add((link.source, link.target))
        for end, value in (("from", link.source), ("to", link.target)):
            host = topo.host_of(value) if value not in names else None
            if host is not None:
                yield (
                    ("links", i, end),
                    f"{value!r} runs inside the monolith {host!r}: link to {host!r} instead "
                    "(calls between hosted services stay in-process)",
                )
        source = names.get(link.source)
        target = names.get(link.target)
        if source is not None and target is not None and source.kind == "cdn":
            if target.kind == "cdn":
                yield ("links", i, "to"), "a cdn's origin cannot be another cdn"
            elif topo.instance_count(link.target) != 1:
                yield ("links", i, "to"), "a cdn's origin must run exactly one instance"


def _monolith_problems(topo: Topology, name: str, comp: Component) -> Iterator[tuple[Path_, str]]:
    where: Path_ = ("components", name)
    if not comp.hosts:
        yield (
            where,
            (
                "a monolith needs 'hosts': the services it runs in one process, "
                f"e.g. hosts: [{', '.join(HOSTABLE)}]"
            ),
        )
        return
    for i, service in enumerate(comp.hosts):
        if service not in HOSTABLE:
            yield (
                (*where, "hosts", i),
                (
                    f"unknown service {service!r}; a monolith hosts services among "
                    f"{', '.join(HOSTABLE)}"
                ),
            )
        elif service in topo.components:
            yield (
                (*where, "hosts", i),
                (
                    f"{service!r} is also a component of its own: remove one of the two "
                    "(a service runs either in the monolith or as its own process)"
                ),
            )
        elif any(
            other != name and c.kind == "monolith" and service in (c.hosts or ())
            for other, c in topo.components.items()
        ):
            yield (*where, "hosts", i), f"{service!r} is hosted by another monolith too"
    if len(set(comp.hosts)) != len(comp.hosts):
        yield (*where, "hosts"), "a service is listed twice; list each once"


def parse_topology(text: str, source: str = "<topology>") -> Topology:
    """Parse and validate topology YAML; raise ``TopologyError`` naming file, line and problem."""
    try:
        marked = load_marked(text, source)
    except YamlFileError as exc:
        raise TopologyError(exc.problems) from None
    try:
        topo = Topology.model_validate(marked.data)
    except ValidationError as exc:
        raise TopologyError(list(_pydantic_problems(exc, marked))) from None
    problems = [marked.problem(p, m) for p, m in _semantic_problems(topo)]
    if problems:
        raise TopologyError(problems)
    return topo


def load_topology(path: Path | str | None = None) -> Topology:
    """Load a topology file (``None``: the default that ships with the package)."""
    if path is None:
        text = default_topology_text()
        return parse_topology(text, "topology.default.yaml")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read topology file {p}: {exc.strerror}") from None
    return parse_topology(text, str(p))


def default_topology_text() -> str:
    return resources.files("management").joinpath("topology.default.yaml").read_text("utf-8")


def default_topology_path() -> Path:
    return Path(str(resources.files("management").joinpath("topology.default.yaml")))
