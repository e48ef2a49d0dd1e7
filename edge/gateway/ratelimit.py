"""Per-key rate limiting with token buckets, in a bounded table.

Hand-written rather than taken from ``aiolimiter``: that library makes a caller *wait* for
capacity, while a gateway must *refuse* at once and tell the client when to come back
(``Retry-After``). The arithmetic of a token bucket is a few lines; the table of buckets is an
LRU bounded at ``max_keys`` so no sequence of keys can grow memory without limit (an evicted
bucket starts full again, which only ever errs towards letting a request through).

Each gateway replica keeps its own buckets, so N replicas behind the balancer allow up to N
times a key's rate in total; the balancer's consistent-hash policy on ``X-API-Key`` would pin a
key to one replica where that matters.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class Decision:
    """The verdict on one request: allowed, or refused with the seconds until a token is back."""

    allowed: bool
    retry_after: float = 0.0
    remaining: int = 0


class RateLimiter:
    """Token buckets keyed by API key; ``check`` takes one token or says when to retry."""

    def __init__(self, *, max_keys: int = 1024, clock: Callable[[], float] = time.monotonic):
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: str, *, rate: float, burst: int) -> Decision:
        """Take one token from ``key``'s bucket (``rate`` per second, ``burst`` capacity)."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(tokens=float(burst), updated=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(burst), bucket.tokens + elapsed * rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return Decision(allowed=True, remaining=int(bucket.tokens))
        return Decision(allowed=False, retry_after=(1.0 - bucket.tokens) / rate)
