"""Orders' settings, read once from the environment.

``ORDERS_SAGA_TIMEOUT``       seconds an order may stay pending; the audit holds orders to it (30)
``ORDERS_RESERVATION_TTL``    seconds a reservation is held before inventory expires it (120)
``ORDERS_LEASE_SECONDS``      seconds a driver owns a saga before recovery may take it over (15)
``ORDERS_RECOVERY_INTERVAL``  seconds between recovery passes (1)
``ORDERS_CALL_TIMEOUT``       deadline of calls to catalog and inventory, seconds (3)
``ORDERS_CHARGE_TIMEOUT``     deadline of calls to payments, seconds (8)
``TESTBED_CONSISTENCY``       ``saga`` (default) or ``naive`` (no keys, compensation, recovery)
``TESTBED_CRASH_AFTER``       testing hook: exit 137 right after a saga step is stored
                              (``started``, ``reserved``, ``charged``, ``compensating``, ...)
plus the common ``TESTBED_*`` variables of ``mesh.process`` and the ``TESTBED_DB_*`` ones of
``services.common.db`` (upstreams: catalog, inventory,
payments).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.process import ProcessConfig, env_float
from services.common.consistency import Consistency, consistency_from_env
from services.common.db import DbSettings
from services.orders.checkout import SagaSettings


@dataclass(frozen=True, kw_only=True)
class Config:
    process: ProcessConfig
    db: DbSettings = field(default_factory=DbSettings)
    consistency: Consistency = Consistency.SAGA
    saga: SagaSettings = field(default_factory=SagaSettings)
    recovery_interval: float = 1.0
    call_timeout: float = 3.0
    charge_timeout: float = 8.0
    crash_after: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        e = os.environ if env is None else env
        recovery_interval = env_float(e, "ORDERS_RECOVERY_INTERVAL", 1.0, minimum=0.05)
        return cls(
            process=ProcessConfig.from_env("orders", e),
            db=DbSettings.from_env(e),
            consistency=consistency_from_env(e),
            saga=SagaSettings(
                saga_timeout=env_float(e, "ORDERS_SAGA_TIMEOUT", 30.0, minimum=0.1),
                reservation_ttl=env_float(e, "ORDERS_RESERVATION_TTL", 120.0, minimum=0.1),
                lease_seconds=env_float(e, "ORDERS_LEASE_SECONDS", 15.0, minimum=0.1),
                retry_after=recovery_interval,
            ),
            recovery_interval=recovery_interval,
            call_timeout=env_float(e, "ORDERS_CALL_TIMEOUT", 3.0, minimum=0.01),
            charge_timeout=env_float(e, "ORDERS_CHARGE_TIMEOUT", 8.0, minimum=0.01),
            crash_after=tuple(
                p.strip() for p in e.get("TESTBED_CRASH_AFTER", "").split(",") if p.strip()
            ),
        )
