"""The experiment's Locust load for a Chaos Toolkit run: started and stopped across calls.

``testbed chaos run`` holds its ``LocustRun`` for the whole run; Chaos Toolkit calls one
function at a time, so here the load's processes (Locust, or its master and workers) are
started detached and their pids written to ``<out>/load.json``. Stopping reads them back:
SIGINT to the master (it stops its users, writes its reports and tells its workers to quit),
then SIGINT and SIGKILL to whatever is still running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from load.runner import LoadPlan, locust_command, worker_command
from load.stats import LocustStats

__all__ = ["LOAD_FILE", "load_plan_prefix", "record_of", "running", "start", "stats", "stop"]

LOAD_FILE = "load.json"
STOP_GRACE_S = 15.0


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(cmd: list[str], log: Path) -> int:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    return proc.pid


def start(plan: LoadPlan) -> dict[str, Any]:
    """Start the load; returns (and records in ``<out>/load.json``) what was started."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port() if plan.workers else None
    command = locust_command(plan, port)
    master = _spawn(command, plan.log)
    workers: list[int] = []
    try:
        for i in range(plan.workers):
            assert port is not None
            workers.append(_spawn(worker_command(plan, port), plan.worker_log(i)))
    finally:
        started = {
            "master": master,
            "workers": workers,
            "prefix": str(plan.prefix),
            "command": command,
            "started_at": time.time(),
            "plan": {
                "users": plan.users,
                "rate": plan.rate,
                "shape": plan.shape,
                "duration": plan.duration,
                "workers": plan.workers,
            },
            "reports": {
                "html": str(plan.html),
                "stats_csv": f"{plan.prefix}_stats.csv",
                "history_csv": f"{plan.prefix}_stats_history.csv",
                "failures_csv": f"{plan.prefix}_failures.csv",
                "log": str(plan.log),
            },
        }
        (plan.out_dir / LOAD_FILE).write_text(json.dumps(started, indent=2), encoding="utf-8")
    return started


def record_of(out_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((out_dir / LOAD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (reaping it when it is our own child and has exited)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _wait(pids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if _alive(p)]
    return left


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def running(out_dir: Path) -> bool:
    record = record_of(out_dir)
    return record is not None and _alive(int(record["master"]))


def stop(out_dir: Path) -> dict[str, Any] | None:
    """Stop the load recorded in ``out_dir`` (idempotent); its record, or ``None``."""
    record = record_of(out_dir)
    if record is None:
        return None
    master = int(record["master"])
    workers = [int(w) for w in record.get("workers", [])]
    if _alive(master):
        _signal([master], signal.SIGINT)
        _signal(_wait([master], STOP_GRACE_S), signal.SIGKILL)
    left = _wait(workers, 5.0)
    _signal(left, signal.SIGINT)
    _signal(_wait(left, 5.0), signal.SIGKILL)
    _wait([master, *workers], 2.0)
    return record


def load_plan_prefix(out_dir: Path) -> Path | None:
    record = record_of(out_dir)
    return Path(record["prefix"]) if record else None


def stats(out_dir: Path) -> LocustStats | None:
    """The load's statistics so far (``None`` when no load was started)."""
    prefix = load_plan_prefix(out_dir)
    if prefix is None:
        return None
    s = LocustStats.for_prefix(prefix)
    s.refresh()
    return s
