"""One experiment per stack at a time; a dead runner's Locust is stopped by the rollback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.lock import StackBusy, StackLock, load_is_ours, stop_orphaned_load
from chaos.rollback import _stop_load

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from chaos.lock import StackLock\n"
    "lock = StackLock(Path(sys.argv[1]), 'payments-latency')\n"
    "lock.acquire()\n"
    "print('held', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process (another runner) holding the stack's lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_runner_is_refused_naming_the_running_one(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(StackBusy) as refused, StackLock(tmp_path, "orders-kill"):
        pytest.fail("the lock was taken twice")
    message = str(refused.value)
    assert "'payments-latency'" in message
    assert f"pid {holder.pid}" in message
    assert "one experiment per stack" in message


def test_the_lock_is_free_once_its_holder_dies_even_by_kill_9(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with StackLock(tmp_path, "orders-kill") as lock:
        assert lock.path.exists()
    # Released on exit: the next one gets it again.
    with StackLock(tmp_path, "orders-kill-naive"):
        pass


def test_the_lock_is_not_reentrant_within_one_process(tmp_path: Path) -> None:
    with StackLock(tmp_path, "a"), pytest.raises(StackBusy), StackLock(tmp_path, "b"):
        pass


def _fake_locust() -> subprocess.Popen[bytes]:
    """A process whose command line says locust, in a session of its own, as the runner's."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "locust", "--headless"],
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not load_is_ours(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)  # until the child has exec'd: before that its command line is ours
    return proc


def test_rollback_stops_the_load_of_an_unfinished_run(tmp_path: Path) -> None:
    proc = _fake_locust()
    try:
        assert load_is_ours(proc.pid)
        data = {"verdict": None, "events": [{"kind": "load_started", "pid": proc.pid}]}
        actions = _stop_load(data, tmp_path / "run-1" / "journal.json")
        assert actions == [f"stopped the load (Locust pid {proc.pid}) of run-1"]
        assert proc.wait(timeout=10) == -signal.SIGTERM
        # Nothing left to stop the second time.
        assert _stop_load(data, tmp_path / "run-1" / "journal.json") == []
    finally:
        proc.kill()
        proc.wait()


def test_a_pid_that_is_not_locust_is_left_alone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not stop_orphaned_load(proc.pid)
        time.sleep(0.2)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
