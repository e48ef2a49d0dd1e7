"""Testing hook: crash the process right after a named step is durably stored.

``TESTBED_CRASH_AFTER=<step>[,<step>...]`` (or the admin switch ``POST /admin/crash-after``)
arms crash points; when the code reaches an armed point it calls ``os._exit(137)`` at once, as a
``kill -9`` would, without flushing or running cleanups. This makes crash schedules reachable
deterministically in tests and experiments. Never arm it in a real deployment.

Points: orders ``started``, ``reserved``, ``charged``, ``compensating``, ``confirmed``,
``failed`` (after the saga step is committed); payments ``charge_pending`` (the charge is
recorded as pending, the provider has not answered yet).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping

CRASH_EXIT_CODE = 137


class CrashSwitch:
    """The set of armed crash points of one process (mutable: the admin API arms and disarms)."""

    def __init__(self, points: Iterable[str] = ()) -> None:
        self.armed: set[str] = {p for p in points if p}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CrashSwitch:
        raw = env.get("TESTBED_CRASH_AFTER", "")
        return cls(p.strip() for p in raw.split(","))

    def reached(self, point: str) -> None:
        """Exit with 137 now if ``point`` is armed."""
        if point in self.armed:
            sys.stderr.write(f"crash hook: exiting after {point!r} (TESTBED_CRASH_AFTER)\n")
            sys.stderr.flush()
            os._exit(CRASH_EXIT_CODE)
