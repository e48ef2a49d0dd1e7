"""Resilience settings and mechanisms for outbound calls: profiles, retry budget, breaker, bulkhead.

A ``ResilienceProfile`` says which protections a caller applies to an upstream, so that
experiments can compare them on the same fault. ``profile_named`` gives the three named
profiles:

``none``   no deadline, no retry, no breaker, no bulkhead, no ejection (a safety cap of
           ``NO_DEADLINE_CAP`` seconds still bounds every call, so nothing hangs forever).
``basic``  deadlines only (a default per-call timeout, shrinking across hops).
``full``   deadlines, retries with exponential backoff and full jitter limited by a retry
           budget (per-try timeout 1 s, so a hung instance is routed around), a circuit
           breaker, a bulkhead and passive outlier ejection.

Defaults of ``full`` (the dataclasses below): 2 s deadline; 2 retries, backoff U(0, 25 ms
doubling up to 500 ms), on unavailable/unknown/internal/resource_exhausted, per-try timeouts
and connect failures; budget 20% of requests over 10 s plus 1 retry/s; breaker opens at 50%
failures of the last 20 calls (at least 10, within 30 s), stays open 5 s, closes after 3
successful trial calls; bulkhead 100 calls in flight (wait up to 25 ms); ejection after 5
consecutive failures for 5 s x times ejected (max 60 s), at most 50% of instances.

Which library does what, and why:

* Retries use ``tenacity`` (in ``mesh.rpc``): ``wait_random_exponential`` is exactly full
  jitter, and its stop/retry hooks take our deadline and budget checks.
* ``RetryBudget`` is hand-written: no library bounds retries as a share of requests. It keeps
  Envoy's rule of thumb (``budget_percent`` 20%: at most about 20% extra load) but counts
  requests and retries over a sliding time window (as Finagle's RetryBudget does) instead of
  concurrent requests, so it also holds for callers that send one request at a time. A small
  floor (``min_retries_per_second``) lets a quiet caller still retry.
* ``CircuitBreaker`` is hand-written: ``purgatory``, ``circuitbreaker``, ``aiobreaker`` and
  ``pybreaker`` all trip on a count of consecutive failures; we need a failure *rate* over a
  sliding window with a minimum number of calls (resilience4j's count-based window, with old
  outcomes also aging out after ``window_seconds``), a half-open state with a bounded number of
  trial calls, an injectable clock for tests, and its state exported as a metric.
* ``Bulkhead`` wraps ``asyncio.Semaphore``: ``aiolimiter`` limits a *rate*, not concurrency.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from enum import IntEnum

from mesh.balancing import OutlierPolicy
from mesh.errors import BulkheadFullError, CircuitOpenError, ConfigError
from mesh.process import ProcessConfig

Clock = Callable[[], float]

# Even the "none" profile bounds a call by this many seconds, so no task waits forever.
NO_DEADLINE_CAP = 300.0

# Codes (``mesh.rpc.Code`` values) worth retrying on another attempt, when the call is safe to
# repeat: the upstream was unreachable/overloaded or failed in a way another try may not.
DEFAULT_RETRY_ON = frozenset({"unavailable", "unknown", "internal", "resource_exhausted"})


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Retries with exponential backoff and full jitter: sleep ~ U(0, min(max, base * 2**n))."""

    max_retries: int = 2
    backoff_base: float = 0.025
    backoff_max: float = 0.5
    per_try_timeout: float | None = None  # only applied to calls that may be retried
    retry_on: frozenset[str] = DEFAULT_RETRY_ON

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_base < 0 or self.backoff_max < self.backoff_base:
            raise ConfigError("retry policy needs max_retries >= 0 and 0 <= backoff_base <= max")


@dataclass(frozen=True, kw_only=True)
class RetryBudgetPolicy:
    """At most ``ratio`` retries per request over ``window_seconds``, plus a small floor."""

    ratio: float = 0.2
    min_retries_per_second: float = 1.0
    window_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.ratio < 0 or self.min_retries_per_second < 0 or self.window_seconds <= 0:
            raise ConfigError("retry budget needs ratio >= 0, floor >= 0 and window > 0")


@dataclass(frozen=True, kw_only=True)
class BreakerPolicy:
    """Open when at least ``failure_rate`` of the last ``window_size`` calls failed."""

    window_size: int = 20
    window_seconds: float = 30.0
    minimum_calls: int = 10
    failure_rate: float = 0.5
    open_seconds: float = 5.0
    half_open_calls: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ConfigError("breaker failure_rate must be within (0, 1]")
        if self.minimum_calls < 1 or self.window_size < self.minimum_calls:
            raise ConfigError("breaker needs 1 <= minimum_calls <= window_size")
        if self.open_seconds <= 0 or self.half_open_calls < 1 or self.window_seconds <= 0:
            raise ConfigError("breaker needs open_seconds > 0, half_open_calls >= 1")


@dataclass(frozen=True, kw_only=True)
class BulkheadPolicy:
    """At most ``max_concurrent`` calls in flight; wait up to ``max_wait`` seconds for a slot."""

    max_concurrent: int = 100
    max_wait: float = 0.025

    def __post_init__(self) -> None:
        if self.max_concurrent < 1 or self.max_wait < 0:
            raise ConfigError("bulkhead needs max_concurrent >= 1 and max_wait >= 0")


@dataclass(frozen=True, kw_only=True)
class ResilienceProfile:
    """Which protections a caller applies to one upstream; ``None`` switches one off."""

    name: str = "custom"
    timeout: float | None = 2.0  # default deadline of a call; None: no deadline
    deadlines: bool = True  # inherit (and propagate) the caller's deadline
    retry: RetryPolicy | None = None
    budget: RetryBudgetPolicy | None = None
    breaker: BreakerPolicy | None = None
    bulkhead: BulkheadPolicy | None = None
    outlier: OutlierPolicy | None = None

    def __post_init__(self) -> None:
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError("profile timeout must be positive (or None for no deadline)")


PROFILES: dict[str, ResilienceProfile] = {
    "none": ResilienceProfile(name="none", timeout=None, deadlines=False),
    "basic": ResilienceProfile(name="basic", timeout=2.0),
    "full": ResilienceProfile(
        name="full",
        timeout=2.0,
        # A hung (paused) instance costs at most a second before the retry goes elsewhere.
        retry=RetryPolicy(per_try_timeout=1.0),
        budget=RetryBudgetPolicy(),
        breaker=BreakerPolicy(),
        bulkhead=BulkheadPolicy(),
        outlier=OutlierPolicy(),
    ),
}


def profile_for(process: ProcessConfig, upstream: str) -> ResilienceProfile:
    """The profile ``process`` applies to calls to ``upstream``: the named profile for that
    link, with the link's per-try timeout when one is set (and the profile retries), and
    without its retry budget when the process says ``TESTBED_RETRY_BUDGET=off``."""
    profile = profile_named(process.resilience_for(upstream))
    per_try = process.per_try_timeouts.get(upstream)
    if per_try is not None and profile.retry is not None:
        profile = replace(profile, retry=replace(profile.retry, per_try_timeout=per_try))
    if not process.retry_budget and profile.budget is not None:
        profile = replace(profile, budget=None)
    return profile


def profile_named(name: str) -> ResilienceProfile:
    """The named profile: ``none``, ``basic`` or ``full``."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(
            f"resilience profile {name!r} is unknown; use one of {', '.join(PROFILES)}"
        ) from None


# -- retry budget ---------------------------------------------------------------------------


class RetryBudget:
    """Allows a retry only while retries stay within ``ratio`` of requests (sliding window)."""

    def __init__(self, policy: RetryBudgetPolicy, *, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        # One bucket per second: [second, requests, retries]; at most window_seconds + 1 kept.
        self._buckets: deque[list[int]] = deque()

    def _bucket(self) -> list[int]:
        second = int(self._clock())
        horizon = second - int(self.policy.window_seconds)
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        return self._buckets[-1]

    def record_request(self) -> None:
        self._bucket()[1] += 1

    def _totals(self) -> tuple[int, int]:
        self._bucket()
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def can_retry(self) -> bool:
        requests, retries = self._totals()
        floor = self.policy.min_retries_per_second * self.policy.window_seconds
        return retries + 1 <= floor + self.policy.ratio * requests

    def record_retry(self) -> None:
        self._bucket()[2] += 1

    def try_acquire(self) -> bool:
        """Take one retry from the budget if there is one."""
        if not self.can_retry():
            return False
        self.record_retry()
        return True


# -- circuit breaker ------------------------------------------------------------------------


class BreakerState(IntEnum):
    """Breaker states; the values are those of the ``rpc_client_breaker_state`` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


StateListener = Callable[[BreakerState, BreakerState], None]


@dataclass
class _Outcome:
    at: float
    ok: bool


class CircuitBreaker:
    """Closed / open / half-open breaker on the failure rate of a sliding window of calls.

    Use: ``breaker.acquire()`` before a call (raises ``CircuitOpenError`` when it must not be
    sent), then exactly one of ``record_success()``, ``record_failure()`` or ``release()``
    (for outcomes that say nothing about the upstream's health, e.g. the caller gave up).
    """

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        clock: Clock = time.monotonic,
        on_change: StateListener | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._window: deque[_Outcome] = deque(maxlen=policy.window_size)
        self._trials_in_flight = 0
        self._trial_successes = 0
        self.transitions: deque[tuple[float, BreakerState]] = deque(maxlen=64)

    @property
    def state(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.policy.open_seconds
        ):
            self._move(BreakerState.HALF_OPEN)
        return self._state

    def peek_state(self) -> BreakerState:
        """The state, without side effects (safe from a metrics scrape in another thread)."""
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.policy.open_seconds
        ):
            return BreakerState.HALF_OPEN
        return self._state

    def failure_rate(self) -> float:
        """Failure share of the calls in the current window (0 when empty)."""
        self._age_out()
        if not self._window:
            return 0.0
        return sum(1 for o in self._window if not o.ok) / len(self._window)

    def acquire(self) -> None:
        state = self.state
        if state is BreakerState.CLOSED:
            return
        if state is BreakerState.OPEN:
            left = self.policy.open_seconds - (self._clock() - self._opened_at)
            raise CircuitOpenError(f"circuit open, next trial in {max(left, 0):.1f}s")
        if self._trials_in_flight + self._trial_successes >= self.policy.half_open_calls:
            raise CircuitOpenError("circuit half-open and its trial calls are in flight")
        self._trials_in_flight += 1

    def record_success(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._trials_in_flight = max(0, self._trials_in_flight - 1)
            self._trial_successes += 1
            if self._trial_successes >= self.policy.half_open_calls:
                self._move(BreakerState.CLOSED)
            return
        if self._state is BreakerState.CLOSED:
            self._window.append(_Outcome(self._clock(), True))

    def record_failure(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._move(BreakerState.OPEN)
            return
        if self._state is not BreakerState.CLOSED:
            return
        self._window.append(_Outcome(self._clock(), False))
        self._age_out()
        if (
            len(self._window) >= self.policy.minimum_calls
            and self.failure_rate() >= self.policy.failure_rate
        ):
            self._move(BreakerState.OPEN)

    def release(self) -> None:
        """The call ended without telling anything about the upstream (e.g. caller gave up)."""
        if self._state is BreakerState.HALF_OPEN:
            self._trials_in_flight = max(0, self._trials_in_flight - 1)

    def _age_out(self) -> None:
        horizon = self._clock() - self.policy.window_seconds
        while self._window and self._window[0].at < horizon:
            self._window.popleft()

    def _move(self, new: BreakerState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        now = self._clock()
        if new is BreakerState.OPEN:
            self._opened_at = now
        if new is not BreakerState.CLOSED or old is BreakerState.HALF_OPEN:
            self._window.clear()
        self._trials_in_flight = 0
        self._trial_successes = 0
        self.transitions.append((now, new))
        if self._on_change is not None:
            self._on_change(old, new)


# -- bulkhead -------------------------------------------------------------------------------


@dataclass
class Bulkhead:
    """A concurrency limit: at most ``policy.max_concurrent`` calls inside ``slot()``."""

    policy: BulkheadPolicy
    _semaphore: asyncio.Semaphore = field(init=False)
    in_flight: int = field(default=0, init=False)
    rejected: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._semaphore = asyncio.Semaphore(self.policy.max_concurrent)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the block; raises ``BulkheadFullError`` if none frees in time."""
        if self._semaphore.locked() and self.policy.max_wait <= 0:
            self.rejected += 1
            raise BulkheadFullError(f"{self.policy.max_concurrent} calls already in flight")
        try:
            async with asyncio.timeout(self.policy.max_wait if self._semaphore.locked() else None):
                await self._semaphore.acquire()
        except TimeoutError:
            self.rejected += 1
            raise BulkheadFullError(
                f"{self.policy.max_concurrent} calls in flight for {self.policy.max_wait}s"
            ) from None
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._semaphore.release()
