"""API-key authentication and per-key rate limiting for the public API (``/api/``).

Only paths under ``/api/`` need a key; the storefront's files, product images, ``/openapi.json``
and the health and metrics endpoints are public. A missing or unknown key is answered 401, a
key over its rate 429 with ``Retry-After``. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from edge.gateway.config import ApiKey
from edge.gateway.metrics import GatewayMetrics
from edge.gateway.problems import ProblemError, retry_after_seconds
from edge.gateway.ratelimit import RateLimiter

API_KEY_HEADER = "X-API-Key"
PROTECTED_PREFIX = "/api/"


@dataclass(frozen=True)
class KeyRing:
    """The configured keys, looked up in constant time per candidate."""

    keys: tuple[ApiKey, ...]

    def find(self, presented: str) -> ApiKey | None:
        found: ApiKey | None = None
        candidate = presented.encode()
        for key in self.keys:
            if hmac.compare_digest(candidate, key.key.encode()):
                found = key
        return found


def auth_middleware(ring: KeyRing, limiter: RateLimiter, metrics: GatewayMetrics) -> Middleware:
    """A middleware that guards ``/api/`` with ``ring`` and ``limiter``."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(PROTECTED_PREFIX):
            return await handler(request)
        presented = request.headers.get(API_KEY_HEADER)
        challenge: Mapping[str, str] = {"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'}
        if not presented:
            metrics.auth_failures.labels(reason="missing").inc()
            raise ProblemError(
                401, "unauthenticated", f"header {API_KEY_HEADER} is required", headers=challenge
            )
        key = ring.find(presented)
        if key is None:
            metrics.auth_failures.labels(reason="unknown").inc()
            raise ProblemError(
                401, "unauthenticated", f"the {API_KEY_HEADER} is not valid", headers=challenge
            )
        decision = limiter.check(key.key, rate=key.rate, burst=key.burst)
        if not decision.allowed:
            metrics.ratelimited.inc()
            raise ProblemError(
                429,
                "rate-limited",
                f"over this key's rate of {key.rate:g} requests a second; retry later",
                headers={"Retry-After": retry_after_seconds(decision.retry_after)},
            )
        return await handler(request)

    return authenticate
