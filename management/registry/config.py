"""The registry process's settings, read once from the environment.

``REGISTRY_DEFAULT_TTL``     TTL in seconds for registrations that do not give one (default 3)
``REGISTRY_MAX_TTL``         the longest TTL a registration may ask for (default 300)
``REGISTRY_MAX_WAIT``        the longest a watch (blocking query) may wait, seconds (default 30)
``REGISTRY_SWEEP_SECONDS``   how often expired registrations are removed (default 0.25)
``REGISTRY_MAX_INSTANCES``   the most registrations it holds (default 10000)
plus the common ``TESTBED_*`` variables (``mesh.process``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mesh.errors import ConfigError
from mesh.process import ProcessConfig


def _num(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw} is out of range {low}-{high}")
    return value


@dataclass(frozen=True, kw_only=True)
class RegistryConfig:
    """Settings of ``python -m management.registry``."""

    process: ProcessConfig
    default_ttl: float = 3.0
    max_ttl: float = 300.0
    max_wait: float = 30.0
    sweep_seconds: float = 0.25
    max_instances: int = 10_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RegistryConfig:
        e = os.environ if env is None else env
        return cls(
            process=ProcessConfig.from_env("registry", e),
            default_ttl=_num(e, "REGISTRY_DEFAULT_TTL", 3.0, 0.1, 3600),
            max_ttl=_num(e, "REGISTRY_MAX_TTL", 300.0, 0.1, 86400),
            max_wait=_num(e, "REGISTRY_MAX_WAIT", 30.0, 0.1, 600),
            sweep_seconds=_num(e, "REGISTRY_SWEEP_SECONDS", 0.25, 0.01, 60),
            max_instances=int(_num(e, "REGISTRY_MAX_INSTANCES", 10_000, 1, 1_000_000)),
        )
