"""Recommendations' settings, read once from the environment.

``RECOMMENDATIONS_CATALOG_TTL``      seconds the fetched catalog is reused (default 60)
``RECOMMENDATIONS_CATALOG_TIMEOUT``  deadline of each ListProducts call, seconds (default 2)
plus the common ``TESTBED_*`` variables of ``mesh.process`` (upstream: catalog).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mesh.process import ProcessConfig, env_float


@dataclass(frozen=True, kw_only=True)
class Config:
    process: ProcessConfig
    catalog_ttl: float = 60.0
    catalog_timeout: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        e = os.environ if env is None else env
        return cls(
            process=ProcessConfig.from_env("recommendations", e),
            catalog_ttl=env_float(e, "RECOMMENDATIONS_CATALOG_TTL", 60.0, minimum=0),
            catalog_timeout=env_float(e, "RECOMMENDATIONS_CATALOG_TIMEOUT", 2.0, minimum=0.01),
        )
