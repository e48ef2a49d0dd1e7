"""Faults as adapters behind one interface: network (Toxiproxy), process (supervisor), service.

``build_fault(spec, units, ctx)`` turns a validated fault spec and the units its blast radius
picked into a ``Fault``; ``fault_from_record`` rebuilds one from its journal record so a later
``testbed chaos rollback`` can undo what a crashed runner left behind.
"""

from chaos.faults.base import Fault, FaultContext, build_fault, fault_from_record

__all__ = ["Fault", "FaultContext", "build_fault", "fault_from_record"]
