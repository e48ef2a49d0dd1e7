"""Payments' settings, read once from the environment.

The simulated provider (see ``provider.py``):

``PAYMENTS_LATENCY_DISTRIBUTION``  constant, uniform, normal, lognormal (default), exponential
``PAYMENTS_LATENCY_MS``            median/mean latency in ms (default 40)
``PAYMENTS_LATENCY_SPREAD``        lognormal sigma, or normal stddev / uniform half-width in ms
``PAYMENTS_LATENCY_MAX_MS``        latency cap in ms (default 3000)
``PAYMENTS_DECLINE_PROBABILITY``   share of charges the provider declines (default 0.05)
``PAYMENTS_PROVIDER_SEED``         seed of the provider's (per key deterministic) decisions

Recovery (``saga`` mode): every ``PAYMENTS_RECOVERY_INTERVAL`` seconds (default 2), charges
pending for more than ``PAYMENTS_PENDING_GRACE`` seconds (default: latency cap + 2 s) are
resolved by asking the provider again.

``TESTBED_CONSISTENCY`` (``saga``: Charge and Refund need an ``Idempotency-Key``),
``TESTBED_CRASH_AFTER=charge_pending`` (testing hook, ``services.common.crash``), plus the
common ``TESTBED_*`` variables of ``mesh.process`` and the ``TESTBED_DB_*`` ones of
``services.common.db``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.process import ProcessConfig, env_float
from services.common.consistency import Consistency, consistency_from_env
from services.common.db import DbSettings
from services.payments.provider import ProviderSettings


@dataclass(frozen=True, kw_only=True)
class Config:
    process: ProcessConfig
    db: DbSettings = field(default_factory=DbSettings)
    consistency: Consistency = Consistency.SAGA
    provider: ProviderSettings = field(default_factory=ProviderSettings)
    recovery_interval: float = 2.0
    pending_grace: float = 5.0
    crash_after: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        e = os.environ if env is None else env
        provider = ProviderSettings.from_env(e)
        return cls(
            process=ProcessConfig.from_env("payments", e),
            db=DbSettings.from_env(e),
            consistency=consistency_from_env(e),
            provider=provider,
            recovery_interval=env_float(e, "PAYMENTS_RECOVERY_INTERVAL", 2.0, minimum=0.05),
            pending_grace=env_float(
                e, "PAYMENTS_PENDING_GRACE", provider.max_latency_ms / 1000 + 2.0, minimum=0
            ),
            crash_after=tuple(
                p.strip() for p in e.get("TESTBED_CRASH_AFTER", "").split(",") if p.strip()
            ),
        )
