"""One experiment per stack at a time, and stopping the load a dead runner left behind.

Two runners on one stack would inject faults into each other's measurements and both report a
verdict. ``StackLock`` is an exclusive ``flock`` on ``<run>/chaos/runner.lock``, held for the
whole run: the kernel releases it when the holder exits, however it dies, so a crashed runner
never blocks the next one. The file also says who holds it (pid, experiment, start time), so a
refused runner can name the one that is running.

A runner's Locust runs in a session of its own (so Ctrl-C reaches the runner first). When the
runner is killed with -9 its Locust keeps driving load until its own end; ``stop_orphaned_load``
finds it from the journal's ``load_started`` event and stops its process group.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from mesh.errors import TestbedError

__all__ = ["StackBusy", "StackLock", "load_is_ours", "stop_orphaned_load"]

LOCK_NAME = "runner.lock"


class StackBusy(TestbedError):
    """Another experiment is running on this stack."""


class StackLock:
    """``with StackLock(run_dir, "orders-kill"):`` — refuses with ``StackBusy`` when held."""

    def __init__(self, run_dir: Path, experiment: str) -> None:
        self.path = run_dir / "chaos" / LOCK_NAME
        self.experiment = experiment
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StackBusy(_busy_message(holder, self.path)) from None
        except BaseException:
            os.close(fd)
            raise
        record = {"pid": os.getpid(), "experiment": self.experiment, "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing drops the flock

    def __enter__(self) -> StackLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _busy_message(holder: dict[str, Any], path: Path) -> str:
    name = holder.get("experiment") or "another experiment"
    pid = holder.get("pid")
    since = holder.get("started")
    when = (
        time.strftime("%H:%M:%S", time.localtime(float(since)))
        if isinstance(since, int | float)
        else "an unknown time"
    )
    who = f"{name!r} (pid {pid})" if pid else repr(name)
    return (
        f"experiment {who} has been running on this stack since {when}; one experiment per "
        f"stack at a time, so that neither measures the other's faults. Wait for it to end, "
        f"stop it with Ctrl-C in its terminal, or start a second stack with another "
        f"--base-port and --run-dir (lock: {path})"
    )


def load_is_ours(pid: int) -> bool:
    """Whether ``pid`` is alive and still a Locust (guards against a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"locust" in cmdline


def stop_orphaned_load(pid: int, *, grace: float = 5.0) -> bool:
    """Stop the process group of a runner's Locust (its session leader); True if it was running.

    SIGTERM lets Locust write its reports; SIGKILL follows after ``grace`` seconds.
    """
    if not load_is_ours(pid):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not load_is_ours(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return True
