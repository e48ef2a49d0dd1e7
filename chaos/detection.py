"""Time to detect and time to recover, per fault, from the alerts that fired during a run.

For each applied fault of the journal: the *relevant* alerts are those about what the fault
touched — an alert whose ``instance`` is one of its instances (or a link's calling instance),
whose ``link`` is its link, or whose ``service`` label is a service it acted on (for a link
alert, the callee) and that names no other instance. Among them, the first one that started
firing after the fault was planned and no later than ``GRACE_S`` after it was rolled back is
its *detection*:

- **time to detect** = that alert's fired time - the fault's ``applied_at`` (0 when the alert
  fired while the fault was being applied: a kill can be seen before ``apply`` returns);
- **recovered at** = when the last relevant alert that fired in that window resolved (``None``
  while one still fires); **time to recover** = recovered at - ``applied_at`` (fault start to
  all clear), and ``clear_after_rollback_s`` = recovered at - ``rolled_back_at``.

An alert already firing before the fault does not detect it. Everything here is a pure
function of the journal's fault records and ``AlertFiring``s, so crafted data tests it.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chaos.alerts import AlertFiring

__all__ = ["GRACE_S", "FaultDetection", "FaultScope", "detect", "detection_section"]

GRACE_S = 10.0
"""An alert up to this long after the rollback still detects the fault: symptoms lag (a
killed process is restarted, a rate window fills) and the fault's effects outlive it."""


@dataclass(frozen=True)
class FaultScope:
    """What a fault touched, as alert labels name it."""

    services: frozenset[str] = frozenset()
    instances: frozenset[str] = frozenset()
    links: frozenset[str] = frozenset()
    """``caller->callee`` component names."""

    @classmethod
    def of(cls, fault: Mapping[str, Any]) -> FaultScope:
        """The scope of a journal fault record (its ``units`` and its spec's target)."""
        services: set[str] = set()
        instances: set[str] = set()
        links: set[str] = set()
        for unit in fault.get("units") or ():
            inst = unit.get("instance")
            if inst:
                services.add(str(inst["service"]))
                instances.add(str(inst["instance_id"]))
                continue
            # A link's own proxy, e.g. ``cdn-sa->balancer``: the calling instance, the callee.
            source, _, callee = str(unit.get("id", "")).partition("->")
            if callee:
                instances.add(source)
                services.add(callee)
        spec: Mapping[str, Any] = fault.get("spec") or {}
        target: Mapping[str, Any] = spec.get("target") or {}
        link = str(target.get("link") or "").replace(" ", "")
        if "->" in link:
            links.add(link)
            services.add(link.partition("->")[2])
        if target.get("service"):
            services.add(str(target["service"]))
        return cls(frozenset(services), frozenset(instances), frozenset(links))

    def covers(self, firing: AlertFiring) -> bool:
        """Whether ``firing`` is about this fault. An alert about one instance must name one
        the fault touched (``InstanceDown`` of orders-2 does not detect a kill of orders-1)."""
        labels = firing.labels
        instance = labels.get("instance")
        if instance in self.instances or labels.get("link") in self.links:
            return True
        return labels.get("service") in self.services and not (instance and self.instances)


@dataclass(frozen=True)
class FaultDetection:
    """Detection and recovery of one fault."""

    fault_id: str
    applied_at: float
    rolled_back_at: float | None
    first: AlertFiring | None
    """The first relevant alert (``None``: not detected)."""
    ttd_s: float | None
    recovered_at: float | None
    ttr_s: float | None
    clear_after_rollback_s: float | None
    firings: tuple[AlertFiring, ...]
    """Every relevant alert that started firing in the fault's window."""

    def to_data(self) -> dict[str, Any]:
        return {
            "fault": self.fault_id,
            "detected": self.first is not None,
            "alert": None if self.first is None else self.first.name,
            "labels": None if self.first is None else dict(self.first.labels),
            "fired_at": None if self.first is None else round(self.first.fired_at, 3),
            "ttd_s": _r(self.ttd_s),
            "recovered_at": _r(self.recovered_at),
            "ttr_s": _r(self.ttr_s),
            "clear_after_rollback_s": _r(self.clear_after_rollback_s),
            "alerts": [f.to_data() for f in self.firings],
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def detect(
    fault: Mapping[str, Any], firings: Iterable[AlertFiring], *, end: float
) -> FaultDetection:
    """Detection and recovery of one applied ``fault`` (a journal record) from ``firings``;
    ``end`` is when the alerts were read (an unrolled-back fault's window ends there)."""
    applied = float(fault["applied_at"])
    planned = float(fault.get("planned_at") or applied)
    rolled_back = fault.get("rolled_back_at")
    window_end = (float(rolled_back) if rolled_back is not None else end) + GRACE_S
    scope = FaultScope.of(fault)
    mine = tuple(
        sorted(
            (f for f in firings if planned <= f.fired_at <= window_end and scope.covers(f)),
            key=lambda f: (f.fired_at, f.name),
        )
    )
    first = mine[0] if mine else None
    ttd = None if first is None else max(0.0, first.fired_at - applied)
    resolved = [f.resolved_at for f in mine]
    recovered = (
        max(r for r in resolved if r is not None)
        if resolved and all(r is not None for r in resolved)
        else None
    )
    return FaultDetection(
        fault_id=str(fault.get("id", "")),
        applied_at=applied,
        rolled_back_at=None if rolled_back is None else float(rolled_back),
        first=first,
        ttd_s=ttd,
        recovered_at=recovered,
        ttr_s=None if recovered is None else recovered - applied,
        clear_after_rollback_s=(
            None if recovered is None or rolled_back is None else recovered - float(rolled_back)
        ),
        firings=mine,
    )


def detection_section(
    faults: Sequence[Mapping[str, Any]], firings: Sequence[AlertFiring], *, end: float
) -> dict[str, Any]:
    """The journal's ``detection``: per applied fault its detection, every alert of the run,
    the median time to detect and a headline (``1.8 s``, ``2/3 (median 2.0 s)``, ``no``)."""
    applied = [f for f in faults if f.get("applied_at")]
    per_fault = [detect(f, firings, end=end) for f in applied]
    ttds = [d.ttd_s for d in per_fault if d.ttd_s is not None]
    median = statistics.median(ttds) if ttds else None
    if not per_fault:
        headline = "n/a"
    elif not ttds:
        headline = "no"
    elif len(ttds) == len(per_fault) == 1:
        headline = f"{ttds[0]:.1f} s"
    else:
        headline = f"{len(ttds)}/{len(per_fault)} (median {median:.1f} s)"
    return {
        "faults": [d.to_data() for d in per_fault],
        "detected": len(ttds),
        "of": len(per_fault),
        "median_ttd_s": _r(median),
        "alerts": [f.to_data() for f in firings],
        "headline": headline,
    }
