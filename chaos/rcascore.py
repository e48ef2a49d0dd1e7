"""Scoring fault localisation as the RCA literature does (RCAEval: AC@1, AC@3, Avg@5).

Pure functions over ranked suspects and the truth, tested with crafted data.

- The truth of an **instance fault** is the instance(s) the fault acted on: a suspect named
  only by its service does not count, nor does another instance of the same service.
- The truth of a **link fault** is the link: ``caller -> callee`` where each side is an
  instance or, when the topology gives only that, a service (``cdn-sa -> balancer``). A link
  suspect matches when its caller and callee are those (by instance or service). In this
  testbed a service link (``orders->payments``) is faulted on the proxy in front of one callee
  *instance*: every call into that instance crosses it, so an instance suspect naming that
  callee instance also matches — the faulty element is that instance's ingress.
- ``rank`` is the 1-based position of the first matching suspect; ``None`` (absent, or no
  suspect at all: "undetermined") is a miss at every k.
- ``AC@k`` is the fraction of cases whose rank is at most ``k``; ``Avg@5`` is the mean of
  AC@1..AC@5.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "Entity",
    "Truth",
    "ac_at",
    "avg_at_5",
    "matches",
    "rank_of",
    "summarize",
    "truth_from_units",
]


@dataclass(frozen=True)
class Entity:
    """What a suspect names: an instance, or a link from a caller to a callee."""

    kind: Literal["instance", "link"]
    instance: str
    """The instance (for a link: the callee instance, or its service when unknown)."""
    service: str
    caller_instance: str = ""
    caller_service: str = ""


@dataclass(frozen=True)
class Truth:
    kind: Literal["instance", "link"]
    instances: frozenset[str] = frozenset()
    """Instance faults: the instances acted on."""
    caller: str = ""
    """Link faults: the caller (instance or service)."""
    callees: frozenset[str] = frozenset()
    """Link faults: the callee instances (proxy per instance) or the callee service."""

    def describe(self) -> str:
        if self.kind == "instance":
            return ", ".join(sorted(self.instances))
        return f"{self.caller}->{'|'.join(sorted(self.callees))}"


def truth_from_units(target: str, units: Iterable[Mapping[str, Any]]) -> Truth:
    """The truth of a journal fault entry (its ``target`` text and ``units`` records)."""
    units = list(units)
    instances = [str(u["instance"]["instance_id"]) for u in units if u.get("instance")]
    if target.startswith("link "):
        caller, _, callee = target.removeprefix("link ").replace(" ", "").partition("->")
        if instances:
            return Truth("link", caller=caller, callees=frozenset(instances))
        callers = {str(u["id"]).partition("->")[0] for u in units}
        if len(callers) == 1:
            caller = callers.pop()
        return Truth("link", caller=caller, callees=frozenset({callee}))
    return Truth("instance", instances=frozenset(instances))


def matches(entity: Entity, truth: Truth) -> bool:
    if truth.kind == "instance":
        return entity.kind == "instance" and entity.instance in truth.instances
    if entity.kind == "instance":
        return entity.instance in truth.callees
    return truth.caller in (entity.caller_instance, entity.caller_service) and bool(
        {entity.instance, entity.service} & truth.callees
    )


def rank_of(suspects: Sequence[Entity], truth: Truth) -> int | None:
    """1-based rank of the first suspect matching ``truth``; None when none does."""
    return next((i for i, s in enumerate(suspects, 1) if matches(s, truth)), None)


def ac_at(ranks: Sequence[int | None], k: int) -> float:
    """Fraction of cases located within the top ``k`` (a miss or undetermined: not)."""
    if not ranks:
        return 0.0
    return sum(r is not None and r <= k for r in ranks) / len(ranks)


def avg_at_5(ranks: Sequence[int | None]) -> float:
    return sum(ac_at(ranks, k) for k in range(1, 6)) / 5.0


def _row(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ranks = [r.get("rank") for r in rows]
    detect = [float(r["detect_s"]) for r in rows if r.get("detect_s") is not None]
    return {
        "cases": len(rows),
        "ac1": round(ac_at(ranks, 1), 3),
        "ac3": round(ac_at(ranks, 3), 3),
        "avg5": round(avg_at_5(ranks), 3),
        "median_detect_s": round(statistics.median(detect), 2) if detect else None,
    }


def summarize(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per fault type and overall: cases, AC@1, AC@3, Avg@5, median detection time."""
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        by_type.setdefault(str(r["type"]), []).append(r)
    return {
        "by_type": {t: _row(rows) for t, rows in sorted(by_type.items())},
        "overall": _row(results),
        "missed": [
            {"case": r["case"], "truth": r["truth"], "rank": r.get("rank"), "why": r.get("why")}
            for r in results
            if r.get("rank") != 1
        ],
    }
