"""Fixtures for the management tests: a port range nobody uses, a private state folder."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from management.ports import port_is_free


@pytest.fixture
def base_port() -> int:
    """A base port whose whole range (below the OS's ephemeral ports) is free right now."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(21000, 32000 - 400, 10)
        if all(port_is_free(p) for p in range(base, base + 400)):
            return base
    raise RuntimeError("no free port range found")


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``up`` records the current run here, never in the user's own state folder."""
    folder = tmp_path / "state"
    monkeypatch.setenv("TESTBED_STATE_DIR", str(folder))
    return folder
