"""The consistency mode every service reads from ``TESTBED_CONSISTENCY``.

``saga`` (default): idempotency keys, compensations and crash recovery.
``naive``: the same calls without idempotency keys, compensation or recovery — what a first
attempt at microservices looks like, kept so an experiment can show the drawback next to its cure.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from mesh.errors import ConfigError


class Consistency(StrEnum):
    SAGA = "saga"
    NAIVE = "naive"


def consistency_from_env(env: Mapping[str, str]) -> Consistency:
    raw = (env.get("TESTBED_CONSISTENCY") or "saga").strip().lower()
    try:
        return Consistency(raw)
    except ValueError:
        raise ConfigError(
            f"TESTBED_CONSISTENCY={raw!r} is unknown; use 'saga' or 'naive'"
        ) from None
