"""Retries, retry budget, circuit breaker and bulkhead: units with a fake clock, and the RPC
client against small real upstream apps."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from mesh.errors import BulkheadFullError, CircuitOpenError, ConfigError
from mesh.resilience import (
    BreakerPolicy,
    BreakerState,
    Bulkhead,
    BulkheadPolicy,
    CircuitBreaker,
    ResilienceProfile,
    RetryBudget,
    RetryBudgetPolicy,
    RetryPolicy,
    profile_named,
)
from mesh.rpc import Code, RpcError
from tests.mesh.conftest import (
    UPSTREAM_SERVICE,
    FakeClock,
    MakeClient,
    Sleeps,
    StartUpstreams,
    sample,
)
from tests.support.processes import free_port

METHOD = f"{UPSTREAM_SERVICE}/Do"


def test_named_profiles() -> None:
    none, basic, full = (profile_named(n) for n in ("none", "basic", "full"))
    assert (none.timeout, none.deadlines, none.retry, none.breaker) == (None, False, None, None)
    assert basic.timeout is not None
    assert (basic.retry, basic.breaker, basic.bulkhead, basic.budget) == (None,) * 4
    assert None not in (full.retry, full.budget, full.breaker, full.bulkhead, full.outlier)
    assert full.budget is not None
    assert full.budget.ratio == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="unknown"):
        profile_named("heroic")


# -- retry budget ---------------------------------------------------------------------------


def test_retry_budget_allows_a_share_of_requests(clock: FakeClock) -> None:
    budget = RetryBudget(
        RetryBudgetPolicy(ratio=0.2, min_retries_per_second=0.0, window_seconds=10), clock=clock
    )
    assert not budget.try_acquire()  # no requests yet, no floor
    for _ in range(100):
        budget.record_request()
    granted = sum(budget.try_acquire() for _ in range(100))
    assert granted == 20
    clock.advance(11)  # the window slid past all of it
    assert not budget.try_acquire()
    for _ in range(10):
        budget.record_request()
    assert sum(budget.try_acquire() for _ in range(10)) == 2


def test_retry_budget_floor(clock: FakeClock) -> None:
    budget = RetryBudget(
        RetryBudgetPolicy(ratio=0.2, min_retries_per_second=0.5, window_seconds=10), clock=clock
    )
    assert sum(budget.try_acquire() for _ in range(20)) == 5


async def test_retry_budget_holds_under_a_failing_upstream(
    start_upstreams: StartUpstreams, make_client: MakeClient, registry: CollectorRegistry
) -> None:
    (up,) = await start_upstreams(1)
    up.mode = "fail"
    profile = ResilienceProfile(
        retry=RetryPolicy(max_retries=3),
        budget=RetryBudgetPolicy(ratio=0.2, min_retries_per_second=0.2, window_seconds=10),
    )
    client = make_client([up.address], profile)
    calls = 100
    for _ in range(calls):
        with pytest.raises(RpcError):
            await client.call(METHOD, {}, dict, idempotent=True)
    retries = up.hits - calls
    floor = 0.2 * 10
    # Without the budget this would be 3 retries per call (300); with it, about 20% extra.
    assert 0.15 * calls <= retries <= 0.2 * calls + floor
    assert sample(registry, "rpc_client_retries_total", upstream="up", method="Do") == retries


async def test_backoff_is_exponential_with_full_jitter(
    start_upstreams: StartUpstreams, make_client: MakeClient
) -> None:
    (up,) = await start_upstreams(1)
    up.mode = "fail"
    policy = RetryPolicy(max_retries=4, backoff_base=0.1, backoff_max=0.5)
    sleeps = Sleeps()
    client = make_client([up.address], ResilienceProfile(retry=policy, timeout=30), sleep=sleeps)
    for _ in range(20):
        with pytest.raises(RpcError):
            await client.call(METHOD, {}, dict, idempotent=True)
    assert up.hits == 20 * 5
    by_retry = [sleeps.delays[i::4] for i in range(4)]
    caps = [0.1, 0.2, 0.4, 0.5]
    for delays, cap in zip(by_retry, caps, strict=True):
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap / 4  # drawn over the whole window, not a fixed value
    assert len(set(sleeps.delays)) > 40  # jittered


async def test_only_safe_failures_are_retried(
    start_upstreams: StartUpstreams, make_client: MakeClient
) -> None:
    (up,) = await start_upstreams(1)
    up.mode = "fail"
    client = make_client([up.address], ResilienceProfile(retry=RetryPolicy(max_retries=2)))
    with pytest.raises(RpcError):
        await client.call(METHOD, {}, dict)  # mutating, no idempotency key: never retried
    assert up.hits == 1
    with pytest.raises(RpcError):
        await client.call(METHOD, {}, dict, idempotency_key="k1")
    assert up.hits == 1 + 3
    up.fail_code = Code.INVALID_ARGUMENT  # the request is at fault: retrying cannot help
    with pytest.raises(RpcError) as caught:
        await client.call(METHOD, {}, dict, idempotent=True)
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert up.hits == 1 + 3 + 1


async def test_connect_failure_is_retried_on_another_instance_even_when_mutating(
    start_upstreams: StartUpstreams, make_client: MakeClient
) -> None:
    (up,) = await start_upstreams(1)
    dead = f"127.0.0.1:{free_port()}"
    client = make_client([dead, up.address], ResilienceProfile(retry=RetryPolicy()))
    for _ in range(4):
        assert await client.call(METHOD, {}, dict) == {"instance": up.name}
    assert up.hits == 4


async def test_per_try_timeout_retries_a_hung_instance(
    start_upstreams: StartUpstreams, make_client: MakeClient
) -> None:
    slow, fast = await start_upstreams(2)
    slow.mode = "hang"
    profile = ResilienceProfile(timeout=5.0, retry=RetryPolicy(per_try_timeout=0.2))
    client = make_client([slow.address, fast.address], profile)
    answer = await client.call(METHOD, {}, dict, idempotent=True)
    assert answer == {"instance": fast.name}
    assert slow.hits == 1
    slow.release.set()


async def test_deadline_exceeded_without_retry_when_overall_deadline_passes(
    start_upstreams: StartUpstreams, make_client: MakeClient
) -> None:
    (up,) = await start_upstreams(1)
    up.mode = "hang"
    client = make_client([up.address], ResilienceProfile(timeout=0.2, retry=RetryPolicy()))
    with pytest.raises(RpcError) as caught:
        await client.call(METHOD, {}, dict, idempotent=True)
    assert caught.value.code is Code.DEADLINE_EXCEEDED
    assert up.hits == 1
    assert up.last_headers["Connect-Timeout-Ms"].isdigit()
    assert int(up.last_headers["Connect-Timeout-Ms"]) <= 200
    up.release.set()


# -- circuit breaker ------------------------------------------------------------------------


def state_of(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state  # a call, so that mypy does not narrow the state across actions


def breaker_policy() -> BreakerPolicy:
    return BreakerPolicy(
        window_size=10, minimum_calls=5, failure_rate=0.5, open_seconds=5, half_open_calls=2
    )


def test_breaker_opens_on_failure_rate_not_before_minimum_calls(clock: FakeClock) -> None:
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(
        breaker_policy(), clock=clock, on_change=lambda a, b: changes.append((a, b))
    )
    for _ in range(4):
        breaker.acquire()
        breaker.record_failure()
    assert state_of(breaker) is BreakerState.CLOSED  # 4 < minimum_calls
    for _ in range(10):
        breaker.acquire()
        breaker.record_success()  # the window (10 calls) now holds only successes
    for _ in range(4):
        breaker.acquire()
        breaker.record_failure()
    assert state_of(breaker) is BreakerState.CLOSED  # 4 failures of 10: 40%
    assert breaker.failure_rate() == pytest.approx(0.4)
    breaker.acquire()
    breaker.record_failure()  # 5 failures of 10: 50%
    assert state_of(breaker) is BreakerState.OPEN
    assert changes == [(BreakerState.CLOSED, BreakerState.OPEN)]
    with pytest.raises(CircuitOpenError, match="open"):
        breaker.acquire()


def test_breaker_half_opens_then_closes_or_reopens(clock: FakeClock) -> None:
    breaker = CircuitBreaker(breaker_policy(), clock=clock)
    for _ in range(5):
        breaker.acquire()
        breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(4.9)
    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(0.2)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    # Half-open: a bounded number of trial calls, a failure reopens.
    breaker.acquire()
    breaker.acquire()
    with pytest.raises(CircuitOpenError, match="half-open"):
        breaker.acquire()
    breaker.record_success()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(5)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    for _ in range(2):
        breaker.acquire()
        breaker.record_success()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.failure_rate() == 0.0


def test_breaker_window_ages_out(clock: FakeClock) -> None:
    policy = BreakerPolicy(window_size=10, window_seconds=30, minimum_calls=5, failure_rate=0.5)
    breaker = CircuitBreaker(policy, clock=clock)
    for _ in range(4):
        breaker.record_failure()
    clock.advance(31)
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.CLOSED  # the old failures no longer count


async def test_client_breaker_opens_half_opens_and_closes(
    start_upstreams: StartUpstreams,
    make_client: MakeClient,
    registry: CollectorRegistry,
    clock: FakeClock,
) -> None:
    (up,) = await start_upstreams(1)
    up.mode = "fail"
    client = make_client([up.address], ResilienceProfile(breaker=breaker_policy()))
    for _ in range(5):
        with pytest.raises(RpcError):
            await client.call(METHOD, {}, dict)
    assert sample(registry, "rpc_client_breaker_state", upstream="up") == 2
    for _ in range(10):  # rejected locally, the upstream sees nothing
        with pytest.raises(RpcError) as caught:
            await client.call(METHOD, {}, dict)
        assert caught.value.code is Code.UNAVAILABLE
        assert "circuit open" in caught.value.message
    assert up.hits == 5
    clock.advance(5)
    assert sample(registry, "rpc_client_breaker_state", upstream="up") == 1
    up.mode = "ok"
    for _ in range(2):
        await client.call(METHOD, {}, dict)
    assert sample(registry, "rpc_client_breaker_state", upstream="up") == 0
    assert up.hits == 7


async def test_client_errors_do_not_open_the_breaker(
    start_upstreams: StartUpstreams, make_client: MakeClient
) -> None:
    (up,) = await start_upstreams(1)
    up.mode, up.fail_code = "fail", Code.NOT_FOUND
    client = make_client([up.address], ResilienceProfile(breaker=breaker_policy()))
    for _ in range(20):
        with pytest.raises(RpcError):
            await client.call(METHOD, {}, dict)
    assert client.breaker is not None
    assert client.breaker.state is BreakerState.CLOSED


# -- bulkhead -------------------------------------------------------------------------------


async def test_bulkhead_rejects_past_its_limit() -> None:
    bulkhead = Bulkhead(BulkheadPolicy(max_concurrent=2))
    release = asyncio.Event()
    entered = [asyncio.Event(), asyncio.Event()]

    async def hold(inside: asyncio.Event) -> None:
        async with bulkhead.slot():
            inside.set()
            await release.wait()

    holders = [asyncio.create_task(hold(e)) for e in entered]
    await asyncio.gather(*(e.wait() for e in entered))
    with pytest.raises(BulkheadFullError):
        async with bulkhead.slot():
            pass
    assert bulkhead.rejected == 1
    release.set()
    await asyncio.gather(*holders)
    async with bulkhead.slot():
        assert bulkhead.in_flight == 1


async def test_bulkhead_waits_up_to_max_wait() -> None:
    bulkhead = Bulkhead(BulkheadPolicy(max_concurrent=1, max_wait=5.0))
    order: list[str] = []

    async def first() -> None:
        async with bulkhead.slot():
            order.append("first")
            await asyncio.sleep(0.01)

    task = asyncio.create_task(first())
    await asyncio.sleep(0)
    async with bulkhead.slot():
        order.append("second")
    await task
    assert order == ["first", "second"]


async def test_client_bulkhead_rejects_calls_past_the_limit(
    start_upstreams: StartUpstreams, make_client: MakeClient, registry: CollectorRegistry
) -> None:
    (up,) = await start_upstreams(1)
    up.mode = "hang"
    client = make_client(
        [up.address], ResilienceProfile(bulkhead=BulkheadPolicy(max_concurrent=2), timeout=10)
    )
    held = [asyncio.create_task(client.call(METHOD, {}, dict)) for _ in range(2)]
    await up.wait_hits(2)
    with pytest.raises(RpcError) as caught:
        await client.call(METHOD, {}, dict)
    assert caught.value.code is Code.RESOURCE_EXHAUSTED
    assert "bulkhead" in caught.value.message
    assert up.hits == 2
    up.release.set()
    assert [await t for t in held] == [{"instance": up.name}] * 2
    assert (
        sample(
            registry,
            "rpc_client_calls_total",
            upstream="up",
            method="Do",
            code="resource_exhausted",
        )
        == 1
    )
