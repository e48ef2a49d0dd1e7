"""The registry's state: live instances per service, TTL expiry, and an index to watch changes.

Modelled on Consul's catalog with TTL checks and blocking queries: every change (register,
deregister, drain, expiry) bumps a global ``index`` and records it as the service's modify
index; a watcher passes the last index it saw and is answered as soon as the service's index
moves past it (or when its wait runs out). Each registration carries a ``session`` (a random id
the instance picks at start): draining an instance tombstones that session, so the instance's
next heartbeat is told to stop (HTTP 410) instead of re-registering, while a restarted process
(new session) registers normally.

In memory on purpose: instances re-register on their next heartbeat after a registry restart,
which is the behaviour the testbed wants to show (the ``epoch`` tells watchers it restarted).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["Draining", "Full", "Record", "RegistryStore", "UnknownInstance"]


class UnknownInstance(LookupError):
    """No live registration with this service, instance id and session."""


class Draining(Exception):
    """The instance was drained by the management plane; it must not register again."""


class Full(Exception):
    """The registry holds its maximum number of instances."""


@dataclass
class Record:
    """One live registration."""

    service: str
    instance_id: str
    address: str
    version: str
    metadata: dict[str, str]
    ttl: float
    session: str
    registered_at: float  # wall clock, for humans
    expires_at: float  # monotonic
    heartbeats: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.instance_id,
            "service": self.service,
            "address": self.address,
            "version": self.version,
            "metadata": dict(self.metadata),
            "ttl_seconds": self.ttl,
            "registered_at": self.registered_at,
            "heartbeats": self.heartbeats,
        }


@dataclass
class RegistryStore:
    """Live registrations with TTLs; watchers wait on ``wait_for_change``."""

    max_instances: int = 10_000
    max_tombstones: int = 10_000
    tombstone_seconds: float = 600.0
    clock: Callable[[], float] = time.monotonic
    epoch: str = field(default_factory=lambda: secrets.token_hex(8))
    index: int = 0
    _services: dict[str, dict[str, Record]] = field(default_factory=dict)
    _service_index: dict[str, int] = field(default_factory=dict)
    _tombstones: dict[tuple[str, str, str], float] = field(default_factory=dict)
    _changed: asyncio.Event | None = None
    _closing: bool = False
    _count: int = 0

    # ---- changes ---------------------------------------------------------------------------
    def _bump(self, service: str) -> int:
        self.index += 1
        self._service_index[service] = self.index
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        return self.index

    def register(
        self,
        service: str,
        instance_id: str,
        *,
        address: str,
        version: str,
        metadata: Mapping[str, str],
        ttl: float,
        session: str,
    ) -> int:
        """Add or replace a registration; returns the new index."""
        if (service, instance_id, session) in self._tombstones:
            raise Draining(f"{service}/{instance_id} is drained")
        instances = self._services.setdefault(service, {})
        existing = instances.get(instance_id)
        if existing is None and self._count >= self.max_instances:
            raise Full(f"the registry holds its maximum of {self.max_instances} instances")
        now = self.clock()
        record = Record(
            service=service,
            instance_id=instance_id,
            address=address,
            version=version,
            metadata=dict(metadata),
            ttl=ttl,
            session=session,
            registered_at=time.time(),
            expires_at=now + ttl,
        )
        if existing is None:
            self._count += 1
        elif (existing.address, existing.version, existing.metadata, existing.session) == (
            address,
            version,
            record.metadata,
            session,
        ):
            # Same registration again (a retried request): renew, no change to watch.
            existing.expires_at = record.expires_at
            existing.ttl = ttl
            return self._service_index.get(service, self.index)
        instances[instance_id] = record
        return self._bump(service)

    def heartbeat(self, service: str, instance_id: str, session: str) -> Record:
        """Renew a registration's TTL; ``UnknownInstance`` tells the caller to register again."""
        if (service, instance_id, session) in self._tombstones:
            raise Draining(f"{service}/{instance_id} is drained")
        record = self._services.get(service, {}).get(instance_id)
        if record is None or record.session != session:
            raise UnknownInstance(f"{service}/{instance_id} is not registered")
        record.expires_at = self.clock() + record.ttl
        record.heartbeats += 1
        return record

    def deregister(self, service: str, instance_id: str, session: str | None = None) -> bool:
        """Remove a registration (only if ``session`` matches, when given); True if removed."""
        instances = self._services.get(service, {})
        record = instances.get(instance_id)
        if record is None or (session is not None and record.session != session):
            return False
        del instances[instance_id]
        self._count -= 1
        self._bump(service)
        return True

    def drain(self, service: str, instance_id: str) -> bool:
        """Deregister and forbid that process (its session) from registering again."""
        record = self._services.get(service, {}).get(instance_id)
        if record is None:
            return False
        if len(self._tombstones) >= self.max_tombstones:
            oldest = min(self._tombstones, key=self._tombstones.__getitem__)
            del self._tombstones[oldest]
        self._tombstones[(service, instance_id, record.session)] = (
            self.clock() + self.tombstone_seconds
        )
        return self.deregister(service, instance_id)

    def expire(self) -> list[Record]:
        """Remove every registration whose TTL ran out; returns them."""
        now = self.clock()
        gone: list[Record] = []
        for service, instances in self._services.items():
            dead = [r for r in instances.values() if r.expires_at <= now]
            for record in dead:
                del instances[record.instance_id]
                self._count -= 1
                gone.append(record)
            if dead:
                self._bump(service)
        for key, until in list(self._tombstones.items()):
            if until <= now:
                del self._tombstones[key]
        return gone

    # ---- reads -----------------------------------------------------------------------------
    def service_index(self, service: str) -> int:
        return self._service_index.get(service, 0)

    def instances(self, service: str) -> list[Record]:
        return sorted(self._services.get(service, {}).values(), key=lambda r: r.instance_id)

    def services(self) -> dict[str, list[Record]]:
        return {s: self.instances(s) for s in sorted(self._services) if self._services[s]}

    def release_watchers(self) -> None:
        """Answer every long poll now and every later one at once (the registry is draining)."""
        self._closing = True
        if self._changed is not None:
            self._changed.set()

    async def wait_for_change(self, service: str, index: int, wait: float) -> int:
        """Wait until ``service``'s index passes ``index`` (or ``wait`` runs out).

        An ``index`` above the registry's own (the registry restarted and counts from zero
        again) is answered at once, so a watcher never hangs on a number that cannot come.
        """
        deadline = self.clock() + wait
        while not self._closing and self.service_index(service) <= index <= self.index:
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            if self._changed is None:
                self._changed = asyncio.Event()
            event = self._changed
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                break
        return self.service_index(service)
