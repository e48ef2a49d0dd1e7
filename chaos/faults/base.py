"""The one interface every fault implements, and how faults are built and rebuilt.

A fault's ``record()`` is JSON written to the journal *before* ``apply()`` runs; it holds all a
later process needs to undo the fault (proxy and toxic names, pids, admin addresses), so
``fault_from_record(record, ctx).rollback()`` works after the runner that applied it has died.
``rollback()`` is idempotent: undoing what is already undone is not an error.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import aiohttp

from chaos.faults.processes import ProcessControl
from chaos.faults.toxiproxy import ToxiproxyClient
from chaos.model import FaultSpec, FaultStep, NetworkFault, ProcessFault, ServiceFault
from chaos.stack import InstanceInfo, StackInfo
from chaos.targets import Unit

__all__ = ["Fault", "FaultContext", "build_fault", "fault_from_record"]


@dataclass
class FaultContext:
    """What faults need to act: the stack, an HTTP session, Toxiproxy, process control."""

    stack: StackInfo
    session: aiohttp.ClientSession
    toxiproxy: ToxiproxyClient | None
    processes: ProcessControl


class Fault(abc.ABC):
    """A fault on some units; ``apply`` then (always) ``rollback``."""

    def __init__(self, fault_id: str, spec: FaultSpec, units: list[Unit], ctx: FaultContext):
        self.id = fault_id
        self.spec = spec
        self.units = units
        self.ctx = ctx
        self.details: dict[str, Any] = {}
        """Facts learned while applying/rolling back (e.g. recovery time), for the journal."""

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.spec.type,
            "name": self.spec.name or self.id,
            "target": self.spec.target.describe(),
            "blast_radius": self.spec.blast_radius,
            "duration": self.spec.duration,
            "spec": self.spec.model_dump(mode="json", by_alias=True),
            "units": [_unit_record(u) for u in self.units],
        }

    def describe(self) -> str:
        ids = ", ".join(u.id for u in self.units)
        return f"{self.spec.type} on {ids}"

    @abc.abstractmethod
    async def apply(self) -> None: ...

    @abc.abstractmethod
    async def rollback(self) -> None: ...


def _unit_record(unit: Unit) -> dict[str, Any]:
    inst = unit.instance
    return {
        "id": unit.id,
        "proxy": unit.proxy,
        "instance": None
        if inst is None
        else {
            "service": inst.service,
            "instance_id": inst.instance_id,
            "address": inst.address,
            "admin_address": inst.admin_address,
            "pid": inst.pid,
            "proxy": inst.proxy,
            "supervisor_name": inst.supervisor_name,
        },
    }


def _unit_from_record(data: dict[str, Any]) -> Unit:
    inst = data.get("instance")
    return Unit(
        id=str(data["id"]),
        proxy=data.get("proxy"),
        instance=None if inst is None else InstanceInfo(**inst),
    )


def build_fault(fault_id: str, spec: FaultSpec, units: list[Unit], ctx: FaultContext) -> Fault:
    from chaos.faults.network import NetworkFaultAdapter
    from chaos.faults.process import ProcessFaultAdapter
    from chaos.faults.service import ServiceFaultAdapter

    if isinstance(spec, NetworkFault):
        return NetworkFaultAdapter(fault_id, spec, units, ctx)
    if isinstance(spec, ProcessFault):
        return ProcessFaultAdapter(fault_id, spec, units, ctx)
    assert isinstance(spec, ServiceFault)
    return ServiceFaultAdapter(fault_id, spec, units, ctx)


def fault_from_record(record: dict[str, Any], ctx: FaultContext) -> Fault:
    """Rebuild a fault from its journal record (to roll it back)."""
    spec = FaultStep.model_validate({"fault": record["spec"]}).fault
    units = [_unit_from_record(u) for u in record["units"]]
    return build_fault(str(record["id"]), spec, units, ctx)
