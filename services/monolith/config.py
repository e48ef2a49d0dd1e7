"""The monolith's settings, read once from the environment.

``MONOLITH_SERVICES``  the services this process hosts, comma-separated, in start order
                       (default: all five, ``catalog,recommendations,inventory,payments,orders``)
plus everything each hosted service reads (``ORDERS_*``, ``CATALOG_*``, ``TESTBED_DB_*``, ...)
and the common ``TESTBED_*`` variables of ``mesh.process``. Each hosted service gets the
monolith's common settings under its own name: ``TESTBED_SERVICE=<service>`` (so its database
stays ``<run_dir>/data/<service>.sqlite3`` and it registers under its own name) and
``TESTBED_INSTANCE_ID=<monolith instance>-<service>``, at the monolith's own address.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mesh.errors import ConfigError
from mesh.process import ProcessConfig
from services import catalog, inventory, orders, payments, recommendations

SERVICES = ("catalog", "recommendations", "inventory", "payments", "orders")
"""Every service the monolith can host, in the order it starts them (callees first)."""

ServiceConfig = (
    catalog.Config | recommendations.Config | inventory.Config | payments.Config | orders.Config
)


@dataclass(frozen=True)
class Hosted:
    """One service hosted by the monolith, with its own config as its own process would read it."""

    name: str
    config: ServiceConfig


def _service_config(name: str, env: Mapping[str, str]) -> ServiceConfig:
    if name == "catalog":
        return catalog.Config.from_env(env)
    if name == "recommendations":
        return recommendations.Config.from_env(env)
    if name == "inventory":
        return inventory.Config.from_env(env)
    if name == "payments":
        return payments.Config.from_env(env)
    return orders.Config.from_env(env)


def parse_services(raw: str) -> tuple[str, ...]:
    """``MONOLITH_SERVICES``: known names, each once, at least one; ordered as ``SERVICES``."""
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise ConfigError(
            f"MONOLITH_SERVICES: unknown service(s) {', '.join(unknown)}; "
            f"choose among {', '.join(SERVICES)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError("MONOLITH_SERVICES: a service is listed twice; list each once")
    if not names:
        raise ConfigError(f"MONOLITH_SERVICES is empty; list services among {', '.join(SERVICES)}")
    return tuple(n for n in SERVICES if n in names)


@dataclass(frozen=True, kw_only=True)
class Config:
    process: ProcessConfig
    hosted: tuple[Hosted, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hosted)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        e = dict(os.environ if env is None else env)
        process = ProcessConfig.from_env("monolith", e)
        names = parse_services(e.get("MONOLITH_SERVICES") or ",".join(SERVICES))
        hosted = []
        for name in names:
            own = {
                **e,
                "TESTBED_SERVICE": name,
                "TESTBED_INSTANCE_ID": f"{process.instance_id}-{name}",
                # The monolith's admin listener serves the whole process; none per service.
                "TESTBED_ADMIN_PORT": "",
                "TESTBED_ADVERTISE": process.advertised_address,
            }
            hosted.append(Hosted(name, _service_config(name, own)))
        return cls(process=process, hosted=tuple(hosted))
