"""Inventory's settings, read once from the environment.

``INVENTORY_SEED_PRODUCTS``    products given stock at first start (default 100; match catalog)
``INVENTORY_EXPIRY_INTERVAL``  seconds between sweeps releasing expired reservations (default 1)
``TESTBED_CONSISTENCY``        ``saga`` (default) or ``naive``
plus the common ``TESTBED_*`` variables of ``mesh.process`` and the ``TESTBED_DB_*`` ones of
``services.common.db``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.process import ProcessConfig, env_float, env_int
from services.common.consistency import Consistency, consistency_from_env
from services.common.db import DbSettings


@dataclass(frozen=True, kw_only=True)
class Config:
    process: ProcessConfig
    db: DbSettings = field(default_factory=DbSettings)
    consistency: Consistency = Consistency.SAGA
    seed_products: int = 100
    expiry_interval: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        e = os.environ if env is None else env
        return cls(
            process=ProcessConfig.from_env("inventory", e),
            db=DbSettings.from_env(e),
            consistency=consistency_from_env(e),
            seed_products=env_int(e, "INVENTORY_SEED_PRODUCTS", 100, minimum=1),
            expiry_interval=env_float(e, "INVENTORY_EXPIRY_INTERVAL", 1.0, minimum=0.05),
        )
