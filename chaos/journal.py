"""The run's journal: one JSON file in the run folder that tells what happened and the verdict.

It holds the timeline (each phase with its start and end), every probe's value, every fault —
written *before* it is applied, then marked applied and rolled back — the load's statistics,
safeguard trips, the verdict (``passed``, ``failed``, ``aborted``, ``error``) and the fault
localisation from traces (``localization``: per applied fault the truth, the ranked suspects
with their evidence, the truth's rank and score; see ``chaos.localize``) and the detection
(``detection``: per applied fault the first relevant alert, time to detect and to recover;
see ``chaos.detection``). The file is
rewritten atomically (temporary file, then ``os.replace``) after every change, so a runner that
crashes leaves a journal from which ``testbed chaos rollback`` can undo what it left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = ["FaultStatus", "Journal", "Verdict", "read_journal"]

JOURNAL_NAME = "journal.json"


class Verdict(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ABORTED = "aborted"
    ERROR = "error"

    @property
    def exit_code(self) -> int:
        return {"passed": 0, "failed": 1, "aborted": 2, "error": 2}[self.value]


class FaultStatus(StrEnum):
    APPLYING = "applying"
    """Recorded, about to be applied: rollback must assume it may be in effect."""
    APPLIED = "applied"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    APPLY_FAILED = "apply_failed"


PENDING_STATUSES = (FaultStatus.APPLYING, FaultStatus.APPLIED, FaultStatus.ROLLBACK_FAILED)


def _now() -> float:
    return round(time.time(), 3)


@dataclass
class Journal:
    """The journal of one experiment run, kept in memory and mirrored to ``path``."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, path: Path, *, experiment: dict[str, Any], source: str | None) -> Journal:
        journal = cls(
            path=path,
            data={
                "experiment": experiment,
                "source": source,
                "started_at": _now(),
                "ended_at": None,
                "verdict": None,
                "reason": None,
                "outcome": None,
                "timeline": [],
                "probes": [],
                "faults": [],
                "safeguards": [],
                "load": None,
                "events": [],
                "stack": None,
                "localization": None,
                "detection": None,
            },
        )
        journal.save()
        return journal

    # -- writing -------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the journal atomically (small file; also safe from signal handlers' finally)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, self.path)

    async def asave(self) -> None:
        await asyncio.to_thread(self.save)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[dict[str, Any]]:
        """Record a phase of the timeline with its start and end time."""
        entry: dict[str, Any] = {"phase": name, "start": _now(), "end": None}
        self.data["timeline"].append(entry)
        self.save()
        try:
            yield entry
        finally:
            entry["end"] = _now()
            self.save()

    def current_phase(self) -> str | None:
        for entry in reversed(self.data["timeline"]):
            if entry["end"] is None:
                return str(entry["phase"])
        return None

    def phase_window(self, name: str) -> tuple[float, float | None] | None:
        for entry in self.data["timeline"]:
            if entry["phase"] == name:
                return float(entry["start"]), entry["end"]
        return None

    def probe(
        self,
        *,
        phase: str,
        name: str,
        value: Any,
        ok: bool,
        tolerance: str,
        detail: str | None = None,
    ) -> None:
        self.data["probes"].append(
            {
                "phase": phase,
                "name": name,
                "at": _now(),
                "value": value,
                "ok": ok,
                "tolerance": tolerance,
                "detail": detail,
            }
        )
        self.save()

    def event(self, kind: str, **fields: Any) -> None:
        self.data["events"].append({"at": _now(), "kind": kind, **fields})
        self.save()

    def fault_planned(self, record: dict[str, Any]) -> dict[str, Any]:
        """Record a fault BEFORE it is applied; returns the entry to update."""
        entry = {
            **record,
            "status": FaultStatus.APPLYING.value,
            "planned_at": _now(),
            "applied_at": None,
            "rolled_back_at": None,
            "error": None,
        }
        self.data["faults"].append(entry)
        self.save()
        return entry

    def fault_status(
        self, entry: dict[str, Any], status: FaultStatus, error: str | None = None, **fields: Any
    ) -> None:
        entry["status"] = status.value
        if status is FaultStatus.APPLIED:
            entry["applied_at"] = _now()
        elif status is FaultStatus.ROLLED_BACK:
            entry["rolled_back_at"] = _now()
        if error is not None:
            entry["error"] = error
        entry.update(fields)
        self.save()

    def pending_faults(self) -> list[dict[str, Any]]:
        return [f for f in self.data["faults"] if f["status"] in PENDING_STATUSES]

    def finish(self, verdict: Verdict, reason: str | None, outcome: str | None = None) -> None:
        self.data["verdict"] = verdict.value
        self.data["reason"] = reason
        self.data["outcome"] = outcome
        self.data["ended_at"] = _now()
        self.save()


def read_journal(path: Path) -> Journal:
    """Load a journal file written by a (possibly crashed) run."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "faults" not in data:
        raise ValueError(f"{path} is not a chaos journal")
    return Journal(path=path, data=data)
