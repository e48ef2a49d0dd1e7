"""Fixtures for the services' real-process tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import Spawner


@pytest.fixture(scope="module")
def module_spawner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spawner]:
    """Like ``spawner`` but shared by one test module (the five services start once)."""
    base: Path = tmp_path_factory.mktemp("stack")
    log_dir = base / "logs"
    log_dir.mkdir()
    s = Spawner(log_dir=log_dir, base_env={"TESTBED_RUN_DIR": str(base / "run")})
    try:
        yield s
    finally:
        s.close()
