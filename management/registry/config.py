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

from mesh.process import ProcessConfig, env_float, env_int


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
            default_ttl=env_float(e, "REGISTRY_DEFAULT_TTL", 3.0, minimum=0.1, maximum=3600),
            max_ttl=env_float(e, "REGISTRY_MAX_TTL", 300.0, minimum=0.1, maximum=86400),
            max_wait=env_float(e, "REGISTRY_MAX_WAIT", 30.0, minimum=0.1, maximum=600),
            sweep_seconds=env_float(e, "REGISTRY_SWEEP_SECONDS", 0.25, minimum=0.01, maximum=60),
            max_instances=env_int(
                e, "REGISTRY_MAX_INSTANCES", 10_000, minimum=1, maximum=1_000_000
            ),
        )
