"""The rate-limiting sampler: at most N new traces a second, parents' decisions followed."""

from __future__ import annotations

import random

from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context
from opentelemetry.trace.span import TraceState

from observability.sampling import (
    ParentBasedRateLimiting,
    RateLimitingSampler,
    trace_budget,
    unsampled_root_maker,
    unsampled_span_maker,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def decisions(sampler: RateLimitingSampler, count: int) -> list[bool]:
    return [
        sampler.should_sample(None, trace_id=i + 1, name="GET /").decision
        is Decision.RECORD_AND_SAMPLE
        for i in range(count)
    ]


def test_it_samples_up_to_the_rate_then_refills_with_time() -> None:
    clock = Clock()
    sampler = RateLimitingSampler(3, clock=clock)
    assert decisions(sampler, 5) == [True, True, True, False, False]
    clock.now += 0.34  # one credit back
    assert decisions(sampler, 2) == [True, False]
    clock.now += 60  # a quiet minute gives one second's worth, not sixty
    assert decisions(sampler, 5) == [True, True, True, False, False]


def test_would_sample_peeks_without_taking_a_credit() -> None:
    clock = Clock()
    sampler = RateLimitingSampler(1, clock=clock)
    assert sampler.would_sample()
    assert sampler.would_sample()
    assert decisions(sampler, 1) == [True]
    assert not sampler.would_sample()
    clock.now += 1
    assert sampler.would_sample()


def test_zero_samples_nothing() -> None:
    sampler = RateLimitingSampler(0)
    assert decisions(sampler, 3) == [False, False, False]
    assert not sampler.would_sample()


def test_parent_based_follows_the_parent_and_limits_only_new_traces() -> None:
    provider = TracerProvider(sampler=ParentBasedRateLimiting(0))
    tracer = provider.get_tracer("test")
    # No credit for new traces: a root span is not recorded...
    assert not tracer.start_span("root").is_recording()
    # ...but a child of a sampled remote parent is, and one of an unsampled parent is not.
    for flags, recorded in ((TraceFlags.SAMPLED, True), (TraceFlags.DEFAULT, False)):
        parent = SpanContext(trace_id=7, span_id=9, is_remote=True, trace_flags=TraceFlags(flags))
        context = set_span_in_context(NonRecordingSpan(parent))
        assert tracer.start_span("child", context=context).is_recording() is recorded


def test_trace_budget_finds_the_limiter_of_our_samplers_only() -> None:
    limiter = RateLimitingSampler(5)
    assert trace_budget(limiter) is limiter
    parent_based = ParentBasedRateLimiting(5)
    assert trace_budget(parent_based) is parent_based.limiter
    assert trace_budget(ALWAYS_ON) is None


def remote_parent(flags: int, state: str = "") -> Context:
    context = SpanContext(
        trace_id=0xABC,
        span_id=0xDEF,
        is_remote=True,
        trace_flags=TraceFlags(flags),
        trace_state=TraceState.from_header([state]) if state else TraceState(),
    )
    return set_span_in_context(NonRecordingSpan(context))


def test_unsampled_spans_carry_what_the_sdk_would_give_them() -> None:
    provider = TracerProvider(sampler=ParentBasedRateLimiting(0))
    make = unsampled_span_maker(provider)
    assert make is not None
    tracer = provider.get_tracer("test")

    # A new trace without credit: fresh valid ids, not sampled, as start_span would make.
    new = make(Context())
    assert new is not None
    assert not new.is_recording()
    ids = new.get_span_context()
    assert ids.is_valid
    assert not ids.trace_flags.sampled
    sdk = tracer.start_span("root").get_span_context()
    assert (sdk.trace_flags, sdk.trace_state) == (ids.trace_flags, ids.trace_state)

    # The child of an unsampled parent: its trace, a new span id, the parent's trace state.
    parent = remote_parent(TraceFlags.DEFAULT, "vendor=1")
    child = make(parent)
    assert child is not None
    ids = child.get_span_context()
    sdk = tracer.start_span("child", context=parent).get_span_context()
    assert (ids.trace_id, ids.trace_flags, ids.trace_state) == (
        sdk.trace_id,
        sdk.trace_flags,
        sdk.trace_state,
    )
    assert ids.span_id != 0xDEF

    # What may be sampled goes through start_span.
    assert make(remote_parent(TraceFlags.SAMPLED)) is None
    with_credit = unsampled_span_maker(TracerProvider(sampler=ParentBasedRateLimiting(5)))
    assert with_credit is not None
    assert with_credit(Context()) is None


def test_no_shortcut_for_other_samplers() -> None:
    assert unsampled_span_maker(TracerProvider(sampler=ALWAYS_ON)) is None
    assert unsampled_span_maker(TracerProvider(sampler=RateLimitingSampler(1))) is None


class CountingIds(IdGenerator):
    def __init__(self) -> None:
        self.last = 0

    def generate_span_id(self) -> int:
        self.last += 1
        return self.last

    def generate_trace_id(self) -> int:
        self.last += 1
        return self.last


def test_unsampled_roots_follow_the_budget_and_draw_the_sdk_ids() -> None:
    sampler = ParentBasedRateLimiting(2)
    clock = Clock()
    budget = sampler.limiter
    budget._clock = clock
    budget._last = clock.now
    make = unsampled_root_maker(TracerProvider(sampler=sampler))
    assert make is not None
    for step in (0.0, 0.0, 0.2, 0.3, 0.1, 0.6, 2.0):
        clock.now += step
        state = random.getstate()
        root = make()
        assert (root is None) == budget.would_sample()
        if root is None:
            assert budget._take()
            continue
        # The ids the default generator would have drawn from the same random state.
        random.setstate(state)
        sdk = RandomIdGenerator()
        random_flag = TraceFlags(TraceFlags.RANDOM_TRACE_ID)
        assert root == (sdk.generate_trace_id(), sdk.generate_span_id(), random_flag)

    # Another id generator is asked for its ids.
    ids = CountingIds()
    provider = TracerProvider(sampler=ParentBasedRateLimiting(0), id_generator=ids)
    other = unsampled_root_maker(provider)
    assert other is not None
    assert other() == (1, 2, TraceFlags(0))
