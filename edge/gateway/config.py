"""The gateway's settings, read once from the environment into a frozen dataclass.

Variables (besides the common ``TESTBED_*`` ones in :mod:`mesh.process`):

``GATEWAY_API_KEYS``              API keys and their rate limits, ``key:rate_per_s:burst`` separated
                                  by commas, e.g. ``demo-key:50:100,other:5:10`` (default
                                  ``demo-key:50:100``). A request to ``/api/`` without one of these
                                  keys in header ``X-API-Key`` gets 401; over its rate, 429.
``GATEWAY_STOREFRONT_KEY``        the key the storefront page uses (default: the first key); it must
                                  be one of ``GATEWAY_API_KEYS``.
``GATEWAY_MAX_BODY_BYTES``        largest request body accepted, else 413 (default 65536).
``GATEWAY_UPSTREAM_TIMEOUT_MS``   deadline of the catalog, inventory and order-status calls
                                  (default 2000).
``GATEWAY_CHECKOUT_TIMEOUT_MS``   deadline of ``PlaceOrder`` (default 8000): the saga behind it
                                  makes several calls of its own.
``GATEWAY_RECOMMENDATIONS_BUDGET_MS`` how long a product page waits for recommendations before
                                  answering without them (default 250).
``GATEWAY_BALANCING``             client-side balancing policy towards services: ``round_robin``
                                  (default), ``least_request`` or ``consistent_hash``.
``GATEWAY_MAX_TRACKED_KEYS``      bound of the rate limiter's table of buckets (default 1024).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.errors import ConfigError
from mesh.process import ProcessConfig

DEFAULT_API_KEYS = "demo-key:50:100"
BALANCING_POLICIES = ("round_robin", "least_request", "consistent_hash")


@dataclass(frozen=True)
class ApiKey:
    """One API key and its token bucket: ``rate`` tokens a second, at most ``burst`` saved up."""

    key: str
    rate: float
    burst: int


def parse_api_keys(raw: str) -> tuple[ApiKey, ...]:
    """Parse ``key:rate_per_s:burst[,key:rate:burst...]``; the message names what is wrong."""
    keys: list[ApiKey] = []
    seen: set[str] = set()
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        fields = part.split(":")
        if len(fields) != 3 or not fields[0]:
            raise ConfigError(f"GATEWAY_API_KEYS: {part!r} is not 'key:rate_per_s:burst'")
        key, rate_raw, burst_raw = fields
        try:
            rate = float(rate_raw)
            burst = int(burst_raw)
        except ValueError:
            raise ConfigError(
                f"GATEWAY_API_KEYS: {part!r}: rate must be a number and burst an integer"
            ) from None
        if rate <= 0 or burst < 1:
            raise ConfigError(f"GATEWAY_API_KEYS: {part!r}: rate must be > 0 and burst >= 1")
        if key in seen:
            raise ConfigError(f"GATEWAY_API_KEYS: key {key!r} is listed twice")
        seen.add(key)
        keys.append(ApiKey(key=key, rate=rate, burst=burst))
    if not keys:
        raise ConfigError("GATEWAY_API_KEYS: no key configured; e.g. 'demo-key:50:100'")
    return tuple(keys)


def _ms(env: Mapping[str, str], name: str, default: int) -> float:
    raw = env.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer number of milliseconds") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be > 0")
    return value / 1000.0


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be > 0")
    return value


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """Everything the gateway needs to know, fixed at start."""

    process: ProcessConfig
    api_keys: tuple[ApiKey, ...] = field(default_factory=lambda: parse_api_keys(DEFAULT_API_KEYS))
    storefront_key: str = "demo-key"
    max_body_bytes: int = 65536
    upstream_timeout: float = 2.0
    checkout_timeout: float = 8.0
    recommendations_budget: float = 0.25
    balancing: str = "round_robin"
    max_tracked_keys: int = 1024

    def __post_init__(self) -> None:
        if self.storefront_key not in {k.key for k in self.api_keys}:
            raise ConfigError(
                f"GATEWAY_STOREFRONT_KEY {self.storefront_key!r} is not one of GATEWAY_API_KEYS"
            )
        if self.balancing not in BALANCING_POLICIES:
            raise ConfigError(
                f"GATEWAY_BALANCING {self.balancing!r} is unknown; "
                f"use one of {', '.join(BALANCING_POLICIES)}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewayConfig:
        """Read the settings; ``env`` defaults to ``os.environ``."""
        e = os.environ if env is None else env
        keys = parse_api_keys(e.get("GATEWAY_API_KEYS") or DEFAULT_API_KEYS)
        return cls(
            process=ProcessConfig.from_env("gateway", e),
            api_keys=keys,
            storefront_key=e.get("GATEWAY_STOREFRONT_KEY") or keys[0].key,
            max_body_bytes=_positive_int(e, "GATEWAY_MAX_BODY_BYTES", 65536),
            upstream_timeout=_ms(e, "GATEWAY_UPSTREAM_TIMEOUT_MS", 2000),
            checkout_timeout=_ms(e, "GATEWAY_CHECKOUT_TIMEOUT_MS", 8000),
            recommendations_budget=_ms(e, "GATEWAY_RECOMMENDATIONS_BUDGET_MS", 250),
            balancing=e.get("GATEWAY_BALANCING") or "round_robin",
            max_tracked_keys=_positive_int(e, "GATEWAY_MAX_TRACKED_KEYS", 1024),
        )
