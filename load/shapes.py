"""Load shapes as pure functions of time: ``steady``, ``step`` and ``spike``.

A shape gives the load *level* (0..1 of the peak) at each second of a run. In closed-loop mode
the level scales the number of users; in open-loop mode (a constant arrival rate) it scales the
arrival rate, so a slow system still receives the load asked of it. Keeping the shapes free of
Locust makes them testable without a running Locust and lets both modes share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["SHAPES", "Phase", "ShapeName", "level", "phases"]

ShapeName = Literal["steady", "step", "spike"]
SHAPES: tuple[ShapeName, ...] = ("steady", "step", "spike")

STEPS = 4
"""``step``: the level climbs in this many equal steps (25%, 50%, 75%, 100%)."""
SPIKE_BASE = 0.3
"""``spike``: the level before and after the spike."""
SPIKE_START, SPIKE_END = 0.4, 0.6
"""``spike``: the spike covers this part of the run (as fractions of its duration)."""


@dataclass(frozen=True)
class Phase:
    """A stretch of the run with one level: from ``start`` to ``end`` seconds."""

    start: float
    end: float
    level: float


def phases(shape: ShapeName, duration: float) -> list[Phase]:
    """The shape's phases over a run of ``duration`` seconds."""
    if duration <= 0:
        raise ValueError("duration must be positive")
    if shape == "steady":
        return [Phase(0.0, duration, 1.0)]
    if shape == "step":
        width = duration / STEPS
        return [Phase(i * width, (i + 1) * width, (i + 1) / STEPS) for i in range(STEPS)]
    if shape == "spike":
        return [
            Phase(0.0, duration * SPIKE_START, SPIKE_BASE),
            Phase(duration * SPIKE_START, duration * SPIKE_END, 1.0),
            Phase(duration * SPIKE_END, duration, SPIKE_BASE),
        ]
    raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")


def level(shape: ShapeName, elapsed: float, duration: float) -> float | None:
    """The level at ``elapsed`` seconds, or ``None`` once the run is over."""
    if elapsed >= duration:
        return None
    for phase in phases(shape, duration):
        if phase.start <= elapsed < phase.end:
            return phase.level
    return None
