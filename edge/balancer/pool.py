"""The set of instances that receive new requests: discovery, health checks, drain.

An instance receives new requests while it is (a) in discovery's last known list and (b) up by
health: active checks (``GET /readyz`` every interval; ``fall`` failures in a row take it out,
``rise`` passes put it back, like HAProxy's ``check inter fall rise``) and passive signals (a
refused connection takes it out at once; consecutive failures eject it through
``mesh.balancing``'s outlier detector). Draining needs no extra state: an instance that left
discovery or fails readiness is simply no longer picked, and requests already sent to it keep
their own connection until they finish.

If every known instance is out, the pool "panics" and offers all of them (as Envoy does) rather
than failing every request on a possibly wrong health signal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from edge.balancer.config import BalancerConfig
from edge.balancer.metrics import BalancerMetrics
from mesh.balancing import Balancer, OutlierPolicy
from mesh.discovery import Discovery, Instance
from observability.logs import get_logger

_log = get_logger("edge.balancer.pool")


@dataclass
class _Health:
    up: bool = True
    fails: int = 0
    passes: int = 0


class UpstreamPool:
    """Which instances of the upstream service may take a new request right now."""

    def __init__(
        self,
        config: BalancerConfig,
        discovery: Discovery,
        metrics: BalancerMetrics,
    ) -> None:
        self.config = config
        self.service = config.upstream
        self.discovery = discovery
        self.metrics = metrics
        self.balancer = Balancer(
            config.policy,
            outlier=OutlierPolicy(
                consecutive_failures=config.outlier_failures,
                base_ejection_seconds=config.ejection_seconds,
                max_ejection_seconds=max(60.0, config.ejection_seconds),
            ),
            on_eject=self._on_eject,
        )
        self._health: dict[str, _Health] = {}
        self._seen: Sequence[Instance] | None = None
        self._all: tuple[Instance, ...] = ()
        self._eligible: tuple[Instance, ...] = ()

    # -- the hot path ------------------------------------------------------------------

    def candidates(self) -> Sequence[Instance]:
        """Instances to balance over: the healthy ones, or all of them if none is healthy."""
        instances = self.discovery.instances(self.service)
        if instances is not self._seen:
            self._refresh(instances)
        return self._eligible or self._all

    def _refresh(self, instances: Sequence[Instance]) -> None:
        self._seen = instances
        current = {i.id for i in instances}
        for gone in [h for h in self._health if h not in current]:
            del self._health[gone]
            with contextlib.suppress(KeyError):
                self.metrics.healthy.remove(gone)
            _log.info("upstream_left", upstream=gone)
        for instance in instances:
            if instance.id not in self._health:
                self._health[instance.id] = _Health()
                self.metrics.healthy.labels(instance.id).set(1)
                _log.info("upstream_joined", upstream=instance.id, address=instance.address)
        self._all = tuple(instances)
        self._recompute()

    def _recompute(self) -> None:
        self._eligible = tuple(i for i in self._all if self._health[i.id].up)

    def is_up(self, instance: Instance) -> bool:
        health = self._health.get(instance.id)
        return health is not None and health.up

    # -- passive signals -----------------------------------------------------------------

    def connect_failed(self, instance: Instance) -> None:
        """A refused or timed-out connection: out at once, back after ``rise`` good checks."""
        self.balancer.record_failure(instance)
        self._set_down(instance.id, "connect_error")

    def _on_eject(self, instance: Instance, duration: float) -> None:
        self.metrics.ejections.labels(instance.id, "outlier").inc()
        _log.warning("upstream_ejected", upstream=instance.id, seconds=duration)

    def _set_down(self, instance_id: str, reason: str) -> None:
        health = self._health.get(instance_id)
        if health is None or not health.up:
            return
        health.up = False
        health.passes = 0
        self.metrics.healthy.labels(instance_id).set(0)
        self.metrics.ejections.labels(instance_id, reason).inc()
        _log.warning("upstream_down", upstream=instance_id, reason=reason)
        self._recompute()

    def _set_up(self, instance_id: str) -> None:
        health = self._health.get(instance_id)
        if health is None or health.up:
            return
        health.up = True
        health.fails = 0
        self.metrics.healthy.labels(instance_id).set(1)
        _log.info("upstream_up", upstream=instance_id)
        self._recompute()

    # -- active checks -------------------------------------------------------------------

    def check_result(self, instance: Instance, ok: bool) -> None:
        """Apply one active check's outcome (``fall``/``rise`` hysteresis)."""
        health = self._health.get(instance.id)
        if health is None:
            return
        if ok:
            health.fails = 0
            health.passes += 1
            if not health.up and health.passes >= self.config.health_rise:
                self._set_up(instance.id)
        else:
            health.passes = 0
            health.fails += 1
            if health.up and health.fails >= self.config.health_fall:
                self._set_down(instance.id, "health_check")

    async def _check(self, session: aiohttp.ClientSession, instance: Instance) -> None:
        url = instance.base_url + self.config.health_path
        timeout = aiohttp.ClientTimeout(total=self.config.health_timeout)
        ok = False
        try:
            async with session.get(url, timeout=timeout) as resp:
                await resp.read()
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        self.check_result(instance, ok)

    async def run_health_checks(self, session: aiohttp.ClientSession) -> None:
        """Check every known instance each interval, until cancelled."""
        while True:
            self.candidates()  # notice discovery changes even without traffic
            instances = self._all
            if instances:
                await asyncio.gather(*(self._check(session, i) for i in instances))
            await asyncio.sleep(self.config.health_interval)
