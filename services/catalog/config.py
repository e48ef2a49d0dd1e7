"""Catalog's settings, read once from the environment.

``CATALOG_SEED_PRODUCTS``         products seeded at first start (default 100)
``CATALOG_CACHE_MAX_AGE``         ``max-age`` of list and detail answers, seconds (default 30)
``CATALOG_STALE_WHILE_REVALIDATE`` seconds a cache may serve stale while refreshing (default 30)
``CATALOG_STALE_IF_ERROR``        seconds a cache may serve stale if the origin fails (default 300)
plus the common ``TESTBED_*`` variables of ``mesh.process`` and the ``TESTBED_DB_*`` ones of
``services.common.db``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.process import ProcessConfig, env_int
from services.common.db import DbSettings


@dataclass(frozen=True, kw_only=True)
class Config:
    process: ProcessConfig
    db: DbSettings = field(default_factory=DbSettings)
    seed_products: int = 100
    cache_max_age: int = 30
    stale_while_revalidate: int = 30
    stale_if_error: int = 300

    @property
    def cache_control(self) -> str:
        return (
            f"public, max-age={self.cache_max_age},"
            f" stale-while-revalidate={self.stale_while_revalidate},"
            f" stale-if-error={self.stale_if_error}"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        e = os.environ if env is None else env
        return cls(
            process=ProcessConfig.from_env("catalog", e),
            db=DbSettings.from_env(e),
            seed_products=env_int(e, "CATALOG_SEED_PRODUCTS", 100, minimum=1),
            cache_max_age=env_int(e, "CATALOG_CACHE_MAX_AGE", 30, minimum=0),
            stale_while_revalidate=env_int(e, "CATALOG_STALE_WHILE_REVALIDATE", 30, minimum=0),
            stale_if_error=env_int(e, "CATALOG_STALE_IF_ERROR", 300, minimum=0),
        )
