"""Real service processes against one database file: start-up under contention, a lock held
by another process at start-up and while serving (readiness, then exit for a restart)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from management.stack import _readiness
from services.common.write_watch import EXIT_WEDGED
from tests.services.test_db import lock_held_by_another_process
from tests.support.processes import Proc, Spawner

pytestmark = pytest.mark.slow


def log_events(proc: Proc) -> list[dict[str, object]]:
    events = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


async def wait_exit(proc: Proc, within: float) -> int:
    assert proc.popen is not None
    deadline = time.monotonic() + within
    for _ in range(int(within / 0.1) + 1):
        code = proc.popen.poll()
        if code is not None:
            return code
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    raise AssertionError(f"{proc.name} still running after {within} s:\n{proc.log_tail()}")


async def wait_readiness(proc: Proc, ready: bool, within: float = 30.0) -> str:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        for _ in range(int(within / 0.1) + 1):
            is_ready, why = await _readiness(http, proc.url + "/readyz")
            if is_ready is ready:
                return why
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    raise AssertionError(f"{proc.name} not ready={ready} within {within} s:\n{proc.log_tail()}")


async def test_instances_starting_and_restarting_at_once_all_get_ready(spawner: Spawner) -> None:
    env = {"TESTBED_DB_BUSY_TIMEOUT_MS": "200", "INVENTORY_SEED_PRODUCTS": "50"}
    procs = [spawner.start("services.inventory", env=env) for _ in range(3)]
    await asyncio.gather(*(p.wait_ready(within=60) for p in procs))
    for p in procs:  # a storm of kill -9, then all back at once
        p.signal(signal.SIGKILL)
    for p in procs:
        assert p.popen is not None
        p.popen.wait(timeout=10)
        p.start()
    await asyncio.gather(*(p.wait_ready(within=60) for p in procs))
    assert all(p.alive() for p in procs)


async def test_a_lock_held_past_the_budget_is_one_clean_line(
    spawner: Spawner, tmp_path: Path
) -> None:
    db_path = tmp_path / "run" / "data" / "payments.sqlite3"
    db_path.parent.mkdir(parents=True)
    async with lock_held_by_another_process(db_path):
        proc = spawner.start(
            "services.payments",
            env={"TESTBED_DB_BUSY_TIMEOUT_MS": "200", "TESTBED_DB_OPEN_TIMEOUT_S": "2"},
        )
        code = await wait_exit(proc, within=40)
    assert code == 1
    text = proc.log_path.read_text(errors="replace")
    assert "Traceback" not in text
    events = log_events(proc)
    assert any(e.get("event") == "database_busy_retry" for e in events)
    failed = [e for e in events if e.get("event") == "startup_failed"]
    assert len(failed) == 1
    assert str(db_path) in str(failed[0]["error"])
    assert "TESTBED_DB_OPEN_TIMEOUT_S" in str(failed[0]["error"])


async def test_a_wedged_write_path_fails_readiness_then_exits(
    spawner: Spawner, tmp_path: Path
) -> None:
    proc = spawner.start(
        "services.payments",
        env={
            "TESTBED_DB_BUSY_TIMEOUT_MS": "300",
            "TESTBED_DB_PROBE_INTERVAL_S": "0.2",
            "TESTBED_DB_STALL_S": "1",
            "TESTBED_DB_WEDGED_EXIT_S": "6",
        },
    )
    await proc.wait_ready(within=60)
    db_path = tmp_path / "run" / "data" / "payments.sqlite3"
    async with lock_held_by_another_process(db_path):  # held briefly: not ready, then back
        why = await wait_readiness(proc, ready=False)
    assert "database" in why
    assert str(db_path) in why
    await wait_readiness(proc, ready=True)
    async with lock_held_by_another_process(db_path):  # held for good: the process leaves
        await wait_readiness(proc, ready=False)
        code = await wait_exit(proc, within=60)
    assert code == EXIT_WEDGED
    assert any(e.get("event") == "database_wedged_exit" for e in log_events(proc))
