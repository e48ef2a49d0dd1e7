"""Where the instances of a service are: one small interface, a static implementation.

Callers (the RPC client, the edge load balancer) only ever ask a ``Discovery`` for the last
known list of instances of a service; how that list is kept fresh is the implementation's
business. ``StaticDiscovery`` serves a fixed mapping (from ``TESTBED_UPSTREAMS``), which tests
and the embedded mode can change at run time with ``update``; the registry-backed discovery
(``mesh.registry_discovery``) implements the same ``Discovery`` protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from mesh.errors import ConfigError
from mesh.process import ProcessConfig

CANARY_SHARE_KEY = "canary_share"
"""Registry metadata of a canary instance: the share of its service's traffic (0-1) callers
send it (``mesh.balancing.Balancer``); instances without it share the rest."""


@dataclass(frozen=True)
class Instance:
    """One reachable instance of a service."""

    id: str
    address: str  # "host:port"
    version: str = "v1"
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"

    @property
    def canary_share(self) -> float | None:
        """The traffic share this canary asked for (``CANARY_SHARE_KEY``), if valid."""
        raw = self.metadata.get(CANARY_SHARE_KEY)
        if raw is None:
            return None
        try:
            share = float(raw)
        except ValueError:
            return None
        return share if 0.0 < share < 1.0 else None


@runtime_checkable
class Discovery(Protocol):
    """The last known instances of each service; ``start``/``close`` bracket its lifetime."""

    def instances(self, service: str) -> Sequence[Instance]:
        """The last known instances of ``service`` (empty if none); never blocks."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def _instances_from(service: str, addresses: Sequence[str]) -> tuple[Instance, ...]:
    seen: set[str] = set()
    result: list[Instance] = []
    for address in addresses:
        host, colon, port = address.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ConfigError(f"upstream {service!r}: {address!r} is not 'host:port'")
        if address in seen:
            continue
        seen.add(address)
        result.append(Instance(id=f"{service}@{address}", address=address))
    return tuple(result)


class StaticDiscovery:
    """A fixed list of instances per service (``TESTBED_UPSTREAMS``), changeable by ``update``."""

    def __init__(self, mapping: Mapping[str, Sequence[str]]) -> None:
        self._instances: dict[str, tuple[Instance, ...]] = {
            service: _instances_from(service, addresses) for service, addresses in mapping.items()
        }

    @classmethod
    def from_process(cls, process: ProcessConfig) -> StaticDiscovery:
        return cls(process.upstreams)

    def instances(self, service: str) -> Sequence[Instance]:
        return self._instances.get(service, ())

    def update(self, service: str, addresses: Sequence[str]) -> None:
        """Replace the instances of ``service`` (tests and scaling use this)."""
        self._instances[service] = _instances_from(service, addresses)

    def services(self) -> Sequence[str]:
        return tuple(self._instances)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
