"""Fixtures shared by every test: real processes on free loopback ports, always stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import Spawner


@pytest.fixture
def spawner(tmp_path: Path) -> Iterator[Spawner]:
    """Start real ``python -m`` processes; every one is stopped when the test ends."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    s = Spawner(log_dir=log_dir, base_env={"TESTBED_RUN_DIR": str(tmp_path / "run")})
    try:
        yield s
    finally:
        s.close()
