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

import random
import time
from collections.abc import Callable, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import (
    INVALID_SPAN_ID,
    INVALID_TRACE_ID,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    get_current_span,
)
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

__all__ = [
    "ParentBasedRateLimiting",
    "RateLimitingSampler",
    "UnsampledRoot",
    "UnsampledSpan",
    "trace_budget",
    "unsampled_root_maker",
    "unsampled_span_maker",
]


class RateLimitingSampler(Sampler):
    """Samples up to ``per_second`` traces a second (bursts up to one second's worth)."""

    def __init__(self, per_second: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_second < 0:
            raise ValueError("per_second must be >= 0")
        self.per_second = per_second
        self._clock = clock
        self._credits = per_second
        self._last = clock()

    def _credits_at(self, now: float) -> float:
        """The bucket's credits at ``now``: refilled at the rate, one second's worth at most."""
        return min(self.per_second, self._credits + (now - self._last) * self.per_second)

    def would_sample(self) -> bool:
        """Whether a new trace started now would be sampled (without taking its credit)."""
        return self._credits_at(self._clock()) >= 1.0

    def _take(self) -> bool:
        now = self._clock()
        credits = self._credits_at(now)
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


UnsampledSpan = Callable[[Context], Span | None]
"""The span for a request that will not be sampled, or None when it will be (see below)."""


UnsampledRoot = Callable[[], tuple[int, int, TraceFlags] | None]
"""``(trace_id, span_id, trace_flags)`` of a new trace the budget has no credit for now, or
None when it has."""


def unsampled_root_maker(provider: TracerProvider) -> UnsampledRoot | None:
    """The ids and flags ``Tracer.start_span`` would give a new trace the rate-limited sampler
    drops (no span object at all: a caller that only propagates the decision needs no more);
    None when the provider's sampler is not ``ParentBasedRateLimiting``."""
    sampler = provider.sampler
    if not isinstance(sampler, ParentBasedRateLimiting):
        return None
    budget = sampler.limiter
    ids = provider.id_generator
    # Not sampled; "random trace id" (W3C level 2) as start_span sets it.
    flags = TraceFlags(TraceFlags.RANDOM_TRACE_ID if ids.is_trace_id_random() else 0)

    if type(ids) is not RandomIdGenerator:

        def make_root() -> tuple[int, int, TraceFlags] | None:
            if budget.would_sample():
                return None
            return ids.generate_trace_id(), ids.generate_span_id(), flags

        return make_root

    # The SDK's default generator: its two methods and the budget's check inlined, as this
    # runs for nearly every request at saturation (~0.25 us instead of ~0.75): the same
    # arithmetic as ``RateLimitingSampler.would_sample``, the same draws from ``random`` as
    # ``RandomIdGenerator`` (redrawn while the invalid id 0 comes up).
    bits = random.getrandbits

    def make_random_root() -> tuple[int, int, TraceFlags] | None:
        per_second = budget.per_second
        now = budget._clock()
        if min(per_second, budget._credits + (now - budget._last) * per_second) >= 1.0:
            return None
        trace_id = bits(128)
        while trace_id == INVALID_TRACE_ID:
            trace_id = bits(128)
        span_id = bits(64)
        while span_id == INVALID_SPAN_ID:
            span_id = bits(64)
        return trace_id, span_id, flags

    return make_random_root


def unsampled_span_maker(provider: TracerProvider) -> UnsampledSpan | None:
    """What ``Tracer.start_span`` makes for a span the sampler drops, made without the SDK's
    span machinery (~1 us instead of ~5 us), for the rate-limited samplers only.

    Given the extracted context of an incoming request: a child of a parent that is not
    sampled, or a new trace the budget has no credit for, gets a ``NonRecordingSpan`` with the
    ids and trace state the SDK would give it (so the decision still propagates downstream);
    anything that may be sampled returns None and goes through ``start_span``. None when the
    provider's sampler is not ``ParentBasedRateLimiting``.
    """
    make_root = unsampled_root_maker(provider)
    if make_root is None:
        return None
    ids = provider.id_generator
    random_flag = TraceFlags(TraceFlags.RANDOM_TRACE_ID)

    def make(parent_context: Context) -> Span | None:
        parent = get_current_span(parent_context).get_span_context()
        if parent.is_valid:
            if parent.trace_flags.sampled:
                return None
            return NonRecordingSpan(
                SpanContext(
                    parent.trace_id,
                    ids.generate_span_id(),
                    is_remote=False,
                    trace_flags=TraceFlags(parent.trace_flags & random_flag),
                    trace_state=parent.trace_state,
                )
            )
        root = make_root()
        if root is None:
            return None
        trace_id, span_id, flags = root
        return NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags))

    return make
