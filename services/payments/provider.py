"""A simulated external payment provider: configurable latency distribution and decline rate.

The provider's decision for a charge is a pure function of ``(seed, idempotency key)``, as a
real provider with idempotency would answer the same key the same way: asking again after a
crash (recovery) or twice by two instances gives one outcome. Latency is drawn afresh on every
call from the configured distribution and capped, so a slow provider never holds a request
forever.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from mesh.errors import ConfigError

DISTRIBUTIONS = ("constant", "uniform", "normal", "lognormal", "exponential")
DECLINE_REASONS = ("insufficient_funds", "card_declined", "expired_card", "do_not_honor")


@dataclass(frozen=True, kw_only=True)
class ProviderSettings:
    """How the simulated provider behaves.

    ``latency_ms`` is the median (lognormal), mean (normal, exponential), centre (uniform) or
    value (constant); ``spread`` is sigma for lognormal, the standard deviation in ms for normal
    and the half-width in ms for uniform.
    """

    distribution: str = "lognormal"
    latency_ms: float = 40.0
    spread: float = 0.5
    max_latency_ms: float = 3_000.0
    decline_probability: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ConfigError(
                f"payment latency distribution {self.distribution!r} is unknown;"
                f" use one of {', '.join(DISTRIBUTIONS)}"
            )
        if self.latency_ms < 0 or self.spread < 0 or self.max_latency_ms < 0:
            raise ConfigError("payment latency settings must not be negative")
        if not 0.0 <= self.decline_probability <= 1.0:
            raise ConfigError(f"decline probability {self.decline_probability} is outside 0..1")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProviderSettings:
        def number(name: str, default: float) -> float:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return float(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a number") from None

        return cls(
            distribution=env.get("PAYMENTS_LATENCY_DISTRIBUTION") or "lognormal",
            latency_ms=number("PAYMENTS_LATENCY_MS", 40.0),
            spread=number("PAYMENTS_LATENCY_SPREAD", 0.5),
            max_latency_ms=number("PAYMENTS_LATENCY_MAX_MS", 3_000.0),
            decline_probability=number("PAYMENTS_DECLINE_PROBABILITY", 0.05),
            seed=int(number("PAYMENTS_PROVIDER_SEED", 0)),
        )

    def updated(self, changes: Mapping[str, Any]) -> ProviderSettings:
        """A copy with ``changes`` applied and validated (the admin API uses this)."""
        allowed = {
            "distribution",
            "latency_ms",
            "spread",
            "max_latency_ms",
            "decline_probability",
            "seed",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ConfigError(f"unknown provider setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **dict(changes))


@dataclass(frozen=True)
class ProviderDecision:
    approved: bool
    decline_reason: str = ""


class PaymentProvider:
    """The simulated provider; ``settings`` may be swapped at run time (admin API)."""

    def __init__(self, settings: ProviderSettings, *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()

    def sample_latency(self) -> float:
        """One latency draw, in seconds, capped at ``max_latency_ms``."""
        s = self.settings
        if s.distribution == "constant":
            ms = s.latency_ms
        elif s.distribution == "uniform":
            ms = self._rng.uniform(s.latency_ms - s.spread, s.latency_ms + s.spread)
        elif s.distribution == "normal":
            ms = self._rng.gauss(s.latency_ms, s.spread)
        elif s.distribution == "exponential":
            ms = self._rng.expovariate(1.0 / s.latency_ms) if s.latency_ms > 0 else 0.0
        else:  # lognormal, latency_ms is the median
            ms = (
                self._rng.lognormvariate(math.log(s.latency_ms), s.spread)
                if s.latency_ms > 0
                else 0.0
            )
        return min(max(ms, 0.0), s.max_latency_ms) / 1000.0

    def decide(self, key: str) -> ProviderDecision:
        """The provider's answer for the charge with ``key``: the same for the same key."""
        digest = hashlib.sha256(f"{self.settings.seed}:{key}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        if draw < self.settings.decline_probability:
            return ProviderDecision(False, DECLINE_REASONS[digest[8] % len(DECLINE_REASONS)])
        return ProviderDecision(True)

    async def authorize(self, key: str) -> ProviderDecision:
        """Ask the provider: waits one latency draw, then answers ``decide(key)``."""
        await asyncio.sleep(self.sample_latency())
        return self.decide(key)
