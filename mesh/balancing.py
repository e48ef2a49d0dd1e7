"""Choosing an instance for each request, and ejecting instances that keep failing.

One ``Balancer`` per (caller, upstream service), shared by the RPC client and by the edge load
balancer. Policies:

``round_robin``      each healthy instance in turn.
``least_request``    power of two choices: two random healthy instances, the one with fewer
                     requests in flight wins (Envoy's LEAST_REQUEST with choice_count=2).
``consistent_hash``  a key (e.g. a user or product id) always lands on the same instance while
                     the set of instances is stable; a ketama ring from ``uhashring``. Without
                     a key the request is balanced round robin.

Canaries (``testbed deploy --canary``): an instance registered with a ``canary_share``
(``mesh.discovery.CANARY_SHARE_KEY``) gets that share of the picks among the candidates, the
other instances the rest (each policy then picks within the chosen group). One random draw per
pick, only while such an instance is known; the shares are read once per instance-list change.

Passive outlier ejection follows Envoy's consecutive-5xx detector: after
``consecutive_failures`` failures in a row an instance is ejected for
``base_ejection_seconds`` times the number of times it has been ejected (capped at
``max_ejection_seconds``); the multiplier decays by one for every ``decay_seconds`` the
instance stays healthy. Never more than ``max_ejection_percent`` of the known instances are
ejected at once, but at least one may always be. If every candidate is ejected the balancer
"panics" (like Envoy's panic threshold) and balances over all of them rather than failing.

Hand-written because no maintained asyncio library does client-side balancing with outlier
ejection; the policies are a few lines each over state we must keep anyway (in-flight counts,
ejections). Time comes from an injectable clock so tests never sleep.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from uhashring import HashRing

from mesh.discovery import Instance
from mesh.errors import ConfigError, NoInstanceError

Clock = Callable[[], float]

POLICIES = ("round_robin", "least_request", "consistent_hash")


@dataclass(frozen=True, kw_only=True)
class OutlierPolicy:
    """Passive outlier ejection settings (Envoy's ``outlier_detection``, consecutive 5xx)."""

    consecutive_failures: int = 5
    base_ejection_seconds: float = 5.0
    max_ejection_seconds: float = 60.0
    max_ejection_percent: float = 50.0
    decay_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ConfigError("outlier consecutive_failures must be at least 1")
        if (
            self.base_ejection_seconds <= 0
            or self.max_ejection_seconds < self.base_ejection_seconds
        ):
            raise ConfigError("outlier ejection times must satisfy 0 < base <= max")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ConfigError("outlier max_ejection_percent must be within 0-100")


@dataclass
class _HostState:
    in_flight: int = 0
    consecutive_failures: int = 0
    ejected_until: float | None = None
    ejections: int = 0  # the ejection-time multiplier
    healthy_since: float = 0.0


EjectCallback = Callable[[Instance, float], None]


class Balancer:
    """Picks instances by policy and tracks in-flight requests and outlier ejections."""

    def __init__(
        self,
        policy: str = "round_robin",
        *,
        outlier: OutlierPolicy | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        on_eject: EjectCallback | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"balancing policy {policy!r} is unknown; use one of {POLICIES}")
        self.policy = policy
        self.outlier = outlier
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_eject = on_eject
        self._hosts: dict[str, _HostState] = {}
        self._known: dict[str, Instance] = {}
        self._seen: Sequence[Instance] | None = None
        self._rr = 0
        self._ring_ids: tuple[str, ...] = ()
        self._ring: HashRing | None = None
        self._shares: dict[str, float] = {}

    # -- choosing -------------------------------------------------------------------------

    def pick(
        self,
        instances: Sequence[Instance],
        key: str | None = None,
        exclude: Collection[Instance] = (),
    ) -> Instance:
        """Choose an instance for one request; raises ``NoInstanceError`` if there is none.

        ``exclude`` holds instances already tried by this request; they are avoided unless
        nothing else is left. Ejected instances are avoided unless all are ejected.
        """
        if not instances:
            raise NoInstanceError("no instances known")
        self._observe(instances)
        candidates: Sequence[Instance] = instances
        if exclude:
            excluded = {i.id for i in exclude}
            candidates = [i for i in instances if i.id not in excluded] or instances
        if self.outlier is not None:  # without a policy nothing is ever ejected
            now = self._clock()
            healthy = [i for i in candidates if not self._ejected_at(i.id, now)]
            if healthy:
                candidates = healthy
        if self._shares and len(candidates) > 1:
            candidates = self._by_share(candidates)
        if len(candidates) == 1:
            return candidates[0]
        if self.policy == "least_request":
            a, b = self._rng.sample(candidates, 2)
            return a if self._state(a.id).in_flight <= self._state(b.id).in_flight else b
        if self.policy == "consistent_hash" and key is not None:
            return self._by_hash(instances, candidates, key)
        chosen = candidates[self._rr % len(candidates)]
        self._rr = (self._rr + 1) % 1_000_000_007
        return chosen

    def _by_share(self, candidates: Sequence[Instance]) -> Sequence[Instance]:
        """The canaries with their share's probability, else the other instances."""
        canaries = [i for i in candidates if i.id in self._shares]
        if not canaries or len(canaries) == len(candidates):
            return candidates
        share = min(1.0, sum(self._shares[i.id] for i in canaries))
        if self._rng.random() < share:
            return canaries
        return [i for i in candidates if i.id not in self._shares]

    def _by_hash(
        self, instances: Sequence[Instance], candidates: Sequence[Instance], key: str
    ) -> Instance:
        # The ring holds every known instance (not only healthy ones) so that an ejection moves
        # only the keys of the ejected instance.
        ids = tuple(sorted(i.id for i in instances))
        if self._ring is None or ids != self._ring_ids:
            self._ring = HashRing(nodes=list(ids))
            self._ring_ids = ids
        allowed = {i.id: i for i in candidates}
        for node in self._ring.iterate_nodes(key):
            if node in allowed:
                return allowed[node]
        return candidates[0]

    def _observe(self, instances: Sequence[Instance]) -> None:
        """Remember the current instance set; forget idle state of instances that left it."""
        # Discovery hands out the same tuple until the set changes: nothing to compare then.
        if instances is self._seen and isinstance(instances, tuple):
            return
        self._seen = instances
        self._shares = {i.id: s for i in instances if (s := i.canary_share) is not None}
        ids = {i.id for i in instances}
        if ids == self._known.keys():
            return
        self._known = {i.id: i for i in instances}
        for gone in [h for h, s in self._hosts.items() if h not in ids and s.in_flight == 0]:
            del self._hosts[gone]

    # -- in-flight tracking (least_request) ------------------------------------------------

    def begin(self, instance: Instance) -> None:
        self._state(instance.id).in_flight += 1

    def end(self, instance: Instance) -> None:
        state = self._state(instance.id)
        state.in_flight = max(0, state.in_flight - 1)

    @contextmanager
    def track(self, instance: Instance) -> Iterator[None]:
        """Count one request in flight to ``instance`` for the duration of the block."""
        self.begin(instance)
        try:
            yield
        finally:
            self.end(instance)

    def in_flight(self, instance: Instance) -> int:
        state = self._hosts.get(instance.id)
        return state.in_flight if state else 0

    # -- outlier ejection -----------------------------------------------------------------

    def record_success(self, instance: Instance) -> None:
        state = self._state(instance.id)
        state.consecutive_failures = 0

    def record_failure(self, instance: Instance) -> None:
        """Count a failure (connect error, 5xx-like code); may eject the instance."""
        if self.outlier is None:
            return
        now = self._clock()
        state = self._state(instance.id)
        if self._ejected_at(instance.id, now):
            return
        state.consecutive_failures += 1
        if state.consecutive_failures < self.outlier.consecutive_failures:
            return
        total = max(len(self._known), len(self._hosts), 1)
        allowed = max(1, int(total * self.outlier.max_ejection_percent / 100))
        if self.outlier.max_ejection_percent == 0 or self._ejected_count(now) >= allowed:
            return
        cap = math.ceil(self.outlier.max_ejection_seconds / self.outlier.base_ejection_seconds)
        state.ejections = min(state.ejections + 1, cap)
        duration = min(
            self.outlier.base_ejection_seconds * state.ejections,
            self.outlier.max_ejection_seconds,
        )
        state.ejected_until = now + duration
        state.consecutive_failures = 0
        if self._on_eject is not None:
            self._on_eject(instance, duration)

    def is_ejected(self, instance: Instance) -> bool:
        return self._ejected_at(instance.id, self._clock())

    def ejected(self) -> list[str]:
        """Ids of the instances ejected right now."""
        now = self._clock()
        return [h for h in list(self._hosts) if self._ejected_at(h, now)]

    def _ejected_count(self, now: float) -> int:
        return sum(1 for h in list(self._hosts) if self._ejected_at(h, now))

    def _ejected_at(self, instance_id: str, now: float) -> bool:
        state = self._hosts.get(instance_id)
        if state is None:
            return False
        if state.ejected_until is not None:
            if now < state.ejected_until:
                return True
            # Back in rotation since ejected_until; the multiplier decays from then on.
            state.healthy_since = state.ejected_until
            state.ejected_until = None
            state.consecutive_failures = 0
        if state.ejections and self.outlier is not None:
            periods = int((now - state.healthy_since) // self.outlier.decay_seconds)
            if periods > 0:
                state.ejections = max(0, state.ejections - periods)
                state.healthy_since += periods * self.outlier.decay_seconds
        return False

    def _state(self, instance_id: str) -> _HostState:
        state = self._hosts.get(instance_id)
        if state is None:
            state = self._hosts[instance_id] = _HostState(healthy_since=self._clock())
        return state
