"""A rate-limiting trace sampler: at most N new traces per second per process.

The testbed's default root sampler (``OTEL_TRACES_SAMPLER=parentbased_ratelimiting``, N from
``OTEL_TRACES_SAMPLER_ARG``, 100 by default): below N new traces a second every request is
traced, so the experiments' loads (tens of requests a second) are traced whole; above it, the
cost of tracing stays bounded instead of growing with the load, which is what lets a saturated
edge hop keep its throughput. A trace that started upstream follows its parent's decision
(``ParentBased``), so a trace is either whole or absent. Jaeger's clients call this sampler
``ratelimiting``; X-Ray's "reservoir" is the same idea.

Hand-written because the OpenTelemetry Python SDK ships only ratio samplers (the Java and Go
contrib modules have rate-limiting ones); it is a token bucket of a few lines. Samplers may be
called from any thread; a lost update under a race only lets one trace more or less through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

__all__ = ["ParentBasedRateLimiting", "RateLimitingSampler", "trace_budget"]


class RateLimitingSampler(Sampler):
    """Samples up to ``per_second`` traces a second (bursts up to one second's worth)."""

    def __init__(self, per_second: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_second < 0:
            raise ValueError("per_second must be >= 0")
        self.per_second = per_second
        self._clock = clock
        self._credits = per_second
        self._last = clock()

    def would_sample(self) -> bool:
        """Whether a new trace started now would be sampled (without taking its credit)."""
        elapsed = self._clock() - self._last
        return min(self.per_second, self._credits + elapsed * self.per_second) >= 1.0

    def _take(self) -> bool:
        now = self._clock()
        credits = min(self.per_second, self._credits + (now - self._last) * self.per_second)
        self._last = now
        if credits >= 1.0:
            self._credits = credits - 1.0
            return True
        self._credits = credits
        return False

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if self._take():
            parent = get_current_span(parent_context).get_span_context()
            return SamplingResult(
                Decision.RECORD_AND_SAMPLE,
                attributes,
                parent.trace_state if parent.is_valid else None,
            )
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        return f"RateLimitingSampler{{{self.per_second:g}/s}}"


class ParentBasedRateLimiting(ParentBased):
    """``ParentBased`` with a ``RateLimitingSampler`` root, which it exposes as ``limiter``."""

    def __init__(self, per_second: float) -> None:
        self.limiter = RateLimitingSampler(per_second)
        super().__init__(self.limiter)


def trace_budget(sampler: Sampler) -> RateLimitingSampler | None:
    """The rate limiter deciding about new traces under ``sampler``, if it is one of ours."""
    if isinstance(sampler, RateLimitingSampler):
        return sampler
    if isinstance(sampler, ParentBasedRateLimiting):
        return sampler.limiter
    return None
