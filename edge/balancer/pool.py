"""The set of instances that receive new requests: discovery, health, ejection, readmission.

An instance receives new requests while it is (a) in discovery's last known list and (b) in
rotation. What takes it out (each an *ejection*, counted in
``balancer_upstream_ejections_total{upstream,reason}``, stamped in
``balancer_upstream_last_ejection_timestamp_seconds``, logged as ``upstream_ejected`` and kept
in the last ``EVENTS_KEPT`` events the admin API's ``GET /ejections`` lists):

``connect_error``         a connection to it was refused or timed out (a request's or a
                          check's): at once, as HAProxy's ``observe layer4`` does.
``unresponsive``          an active check timed out while a request to it had waited for its
                          answer at least half the check's timeout and not one byte came
                          from it in that time, on any connection: at once. That is a frozen
                          process under load (SIGSTOP, a blocked event loop); a slow but living
                          one keeps sending bytes. Its waiting safe requests are failed at
                          once, so the proxy repeats them elsewhere rather than letting them
                          wait for the first-byte timeout. Never the last instance in rotation:
                          a living gateway serving alone on a loaded machine can stall that
                          long too (seen once in six runs), and then the panic below would
                          send requests to the one really frozen. ``fall`` still applies.
``health_check``          ``fall`` failed checks in a row (``GET /readyz`` every interval, like
                          HAProxy's ``check inter fall rise``), e.g. a draining instance. As
                          HAProxy's ``fastinter``, an instance between states (in rotation
                          with a failed check, or out with a passed one) is checked again at
                          once rather than after the interval.
``consecutive_failures``  ``outlier_failures`` requests in a row failed (5xx, reset, no first
                          byte in time), Envoy's consecutive-5xx outlier detection. Never the
                          last instance in rotation either: one bad dependency behind every
                          gateway makes them all answer 5xx, and ejecting them all would help
                          nobody.

Whatever took it out, an instance comes back only after ``rise`` checks in a row pass
(``readmitted`` in the events). Draining needs no extra state: an instance that left discovery
or fails readiness is simply no longer picked, and requests already sent to it keep their own
connection until they finish.

If every known instance is out, the pool "panics" and offers all of them (as Envoy does, and
logs ``upstream_panic``) rather than answering 502 on a possibly wrong health signal: a
request then tries an instance, and its own deadlines (connect, first byte) bound the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from edge.balancer.config import BalancerConfig
from edge.balancer.metrics import BalancerMetrics
from mesh.balancing import Balancer
from mesh.discovery import Discovery, Instance
from observability.logs import get_logger

_log = get_logger("edge.balancer.pool")

EVENTS_KEPT = 256
"""Ejection and readmission events kept for ``GET /ejections`` (oldest dropped first)."""
REASONS = ("connect_error", "unresponsive", "health_check", "consecutive_failures")
SOFT_REASONS = frozenset({"consecutive_failures", "unresponsive"})
"""Reasons that never take out the last instance in rotation."""


class _Waiting(Protocol):
    """What the pool asks of the upstream client (``UpstreamClient``) about live traffic."""

    def stalled(self, address: str, since: float) -> bool: ...

    def abort_waiting(self, address: str, reason: str) -> int: ...


@dataclass
class _Health:
    up: bool = True
    fails: int = 0  # active checks failed in a row
    passes: int = 0  # active checks passed in a row
    live_fails: int = 0  # requests failed in a row
    ejected_at: float | None = None  # wall clock of the last ejection
    reason: str | None = None  # why it is out (None while in rotation)


@dataclass(frozen=True)
class PoolEvent:
    """An instance left or rejoined the rotation."""

    at: float  # Unix time
    upstream: str
    address: str
    event: str  # "ejected" | "readmitted"
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 4),
            "upstream": self.upstream,
            "address": self.address,
            "event": self.event,
            "reason": self.reason,
        }


class UpstreamPool:
    """Which instances of the upstream service may take a new request right now."""

    def __init__(
        self,
        config: BalancerConfig,
        discovery: Discovery,
        metrics: BalancerMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.service = config.upstream
        self.discovery = discovery
        self.metrics = metrics
        # No time-based outlier ejection in the balancer: the pool ejects, and only health
        # checks readmit.
        self.balancer = Balancer(config.policy)
        self.client: _Waiting | None = None  # set once the upstream client exists
        self.events: deque[PoolEvent] = deque(maxlen=EVENTS_KEPT)
        self._clock = clock
        self._health: dict[str, _Health] = {}
        self._addresses: dict[str, str] = {}
        self._seen: Sequence[Instance] | None = None
        self._all: tuple[Instance, ...] = ()
        self._eligible: tuple[Instance, ...] = ()
        self._panicking = False

    # -- the hot path ------------------------------------------------------------------

    def candidates(self) -> Sequence[Instance]:
        """Instances to balance over: those in rotation, or all of them if none is."""
        instances = self.discovery.instances(self.service)
        if instances is not self._seen:
            self._refresh(instances)
        return self._eligible or self._all

    def answered(self, instance: Instance, status: int) -> None:
        """An instance answered a request with ``status`` (5xx counts as a failure)."""
        if status >= 500:
            self.live_failure(instance)
            return
        health = self._health.get(instance.id)
        if health is not None and health.live_fails:
            health.live_fails = 0

    def _refresh(self, instances: Sequence[Instance]) -> None:
        self._seen = instances
        current = {i.id for i in instances}
        for gone in [h for h in self._health if h not in current]:
            del self._health[gone]
            self._addresses.pop(gone, None)
            with contextlib.suppress(KeyError):
                self.metrics.healthy.remove(gone)
            for reason in REASONS:
                with contextlib.suppress(KeyError):
                    self.metrics.ejections.remove(gone, reason)
            _log.info("upstream_left", upstream=gone)
        for instance in instances:
            if instance.id not in self._health:
                self._health[instance.id] = _Health()
                self._addresses[instance.id] = instance.address
                self.metrics.healthy.labels(instance.id).set(1)
                for reason in REASONS:  # from 0, so that increase() sees the first one
                    self.metrics.ejections.labels(instance.id, reason)
                _log.info("upstream_joined", upstream=instance.id, address=instance.address)
        self._all = tuple(instances)
        self._recompute()

    def _recompute(self) -> None:
        self._eligible = tuple(i for i in self._all if self._health[i.id].up)
        panicking = bool(self._all) and not self._eligible
        if panicking and not self._panicking:
            _log.warning(
                "upstream_panic",
                service=self.service,
                detail="every instance is out of rotation: balancing over all of them",
            )
        self._panicking = panicking

    def is_up(self, instance: Instance) -> bool:
        health = self._health.get(instance.id)
        return health is not None and health.up

    def state(self) -> list[dict[str, Any]]:
        """Each known instance: in rotation or not, since when and why it is out."""
        out = []
        for instance in self._all:
            health = self._health[instance.id]
            out.append(
                {
                    "upstream": instance.id,
                    "address": instance.address,
                    "up": health.up,
                    "reason": health.reason,
                    "ejected_at": health.ejected_at,
                }
            )
        return out

    # -- passive signals -----------------------------------------------------------------

    def connect_failed(self, instance: Instance) -> None:
        """A refused or timed-out connection: out at once, back after ``rise`` good checks."""
        self._set_down(instance.id, "connect_error")

    def live_failure(self, instance: Instance) -> None:
        """A request failed on ``instance`` (5xx, reset, no first byte in time)."""
        health = self._health.get(instance.id)
        if health is None or not health.up:
            return
        health.live_fails += 1
        if health.live_fails >= self.config.outlier_failures:
            self._set_down(instance.id, "consecutive_failures")

    def _set_down(self, instance_id: str, reason: str) -> None:
        health = self._health.get(instance_id)
        if health is None or not health.up:
            return
        if reason in SOFT_REASONS and not any(
            i.id != instance_id for i in self._eligible
        ):  # the last one in rotation stays
            health.live_fails = 0
            _log.info("upstream_kept", upstream=instance_id, reason=reason, why="last in rotation")
            return
        now = self._clock()
        health.up = False
        health.passes = 0
        health.live_fails = 0
        health.ejected_at = now
        health.reason = reason
        address = self._addresses.get(instance_id, "")
        self.metrics.healthy.labels(instance_id).set(0)
        self.metrics.ejections.labels(instance_id, reason).inc()
        self.metrics.last_ejection.labels(instance_id).set(now)
        self.events.append(PoolEvent(now, instance_id, address, "ejected", reason))
        self._recompute()
        aborted = 0
        if reason == "unresponsive" and self.client is not None:
            aborted = self.client.abort_waiting(address, f"{instance_id} stopped answering")
        _log.warning(
            "upstream_ejected",
            upstream=instance_id,
            address=address,
            reason=reason,
            at=round(now, 4),
            requests_moved=aborted,
            in_rotation=len(self._eligible),
        )

    def _set_up(self, instance_id: str) -> None:
        health = self._health.get(instance_id)
        if health is None or health.up:
            return
        was = health.reason or ""
        now = self._clock()
        health.up = True
        health.fails = 0
        health.live_fails = 0
        health.reason = None
        address = self._addresses.get(instance_id, "")
        self.metrics.healthy.labels(instance_id).set(1)
        self.events.append(PoolEvent(now, instance_id, address, "readmitted", was))
        self._recompute()
        _log.info("upstream_readmitted", upstream=instance_id, after=was, at=round(now, 4))

    # -- active checks -------------------------------------------------------------------

    def check_result(self, instance: Instance, ok: bool, *, at_once: str | None = None) -> None:
        """Apply one active check's outcome (``fall``/``rise`` hysteresis). ``at_once``: a
        failure that takes the instance out without waiting for ``fall`` (its reason:
        ``connect_error``, ``unresponsive``)."""
        health = self._health.get(instance.id)
        if health is None:
            return
        if ok:
            health.fails = 0
            health.passes += 1
            if not health.up and health.passes >= self.config.health_rise:
                self._set_up(instance.id)
            return
        health.passes = 0
        health.fails += 1
        if health.up and at_once is not None:
            self._set_down(instance.id, at_once)
        if health.up and health.fails >= self.config.health_fall:
            self._set_down(instance.id, "health_check")

    async def _check(self, session: aiohttp.ClientSession, instance: Instance) -> None:
        url = instance.base_url + self.config.health_path
        timeout = aiohttp.ClientTimeout(total=self.config.health_timeout)
        ok = False
        at_once: str | None = None
        try:
            async with session.get(url, timeout=timeout) as resp:
                await resp.read()
                ok = resp.status == 200
        except TimeoutError:
            client = self.client
            since = asyncio.get_running_loop().time() - self.config.health_timeout / 2
            if client is not None and client.stalled(instance.address, since):
                at_once = "unresponsive"
        except aiohttp.ClientConnectorError:
            at_once = "connect_error"
        except aiohttp.ClientError:
            pass
        self.check_result(instance, ok, at_once=at_once)

    async def run_health_checks(self, session: aiohttp.ClientSession) -> None:
        """Check every known instance each interval, until cancelled."""
        while True:
            self.candidates()  # notice discovery changes even without traffic
            instances = self._all
            if instances:
                await asyncio.gather(*(self._check(session, i) for i in instances))
            if not self._changing():
                await asyncio.sleep(self.config.health_interval)

    def _changing(self) -> bool:
        """An instance is between states: in rotation after a failed check, or out after a
        passed one (checked again at once, as HAProxy's ``fastinter``)."""
        return any(h.fails if h.up else h.passes for h in self._health.values())
