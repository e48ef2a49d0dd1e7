"""Run Locust headless as a subprocess (``python -m locust``) and watch it while it runs.

Locust runs on gevent, which must monkey-patch the interpreter before anything else is
imported; running it in its own process keeps gevent out of the asyncio processes (the CLI,
the chaos runner) and lets Ctrl-C and timeouts stop it cleanly. Live statistics come from its
CSV history (``load.stats``); the CSV and HTML reports land in the plan's folder.

With ``workers=N`` the same run is distributed the way Locust distributes itself: the process
above becomes the master (``--master --expect-workers N``, bound to a free loopback port) and N
``--worker`` processes connect to it and run the users. The master aggregates the workers'
statistics, so its CSV history, reports, exit code and SLO gate are read exactly as with one
process; the workers are stopped with the master on every exit path.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from load.shapes import ShapeName
from load.stats import LocustStats
from mesh.errors import TestbedError

__all__ = [
    "DEFAULT_LOCUSTFILE",
    "MAX_WORKERS",
    "LoadPlan",
    "LocustRun",
    "locust_command",
    "read_summary",
    "worker_command",
]

DEFAULT_LOCUSTFILE = Path(__file__).with_name("locustfile.py")
CLOSED_CLASSES = ("ShopperUS", "ShopperEU", "ShopperSA")
OPEN_CLASSES = ("ArrivalsUS", "ArrivalsEU", "ArrivalsSA")
MAX_WORKERS = 32
"""More worker processes than this on one machine only adds overhead."""
WORKERS_WAIT_S = 60
"""The master gives up (and exits non-zero) when its workers have not all connected by then."""


@dataclass(frozen=True, kw_only=True)
class LoadPlan:
    """What load to run, against what, and where its reports go."""

    out_dir: Path
    pops: Mapping[str, str] = field(default_factory=dict)
    host: str | None = None
    """Fallback base URL (the balancer) for users whose region has no PoP."""
    users: int = 10
    spawn_rate: float = 20.0
    rate: float | None = None
    shape: ShapeName = "steady"
    duration: float = 60.0
    api_key: str = "demo-key"
    checkout_weight: int = 2
    locustfile: Path | None = None
    name: str = "locust"
    max_error_ratio: float | None = None
    max_p99_ms: float | None = None
    workers: int = 0
    """0: one Locust process; N: a master and N worker processes (Locust's distributed mode)."""

    def __post_init__(self) -> None:
        if not 0 <= self.workers <= MAX_WORKERS:
            raise TestbedError(f"workers must be between 0 and {MAX_WORKERS}, not {self.workers}")
        if self.workers > self.users:
            raise TestbedError(
                f"{self.workers} workers for {self.users} users would leave workers idle; "
                "use at most as many workers as users"
            )

    @property
    def prefix(self) -> Path:
        return self.out_dir / self.name

    @property
    def html(self) -> Path:
        return self.out_dir / f"{self.name}.html"

    @property
    def log(self) -> Path:
        return self.out_dir / f"{self.name}.log"

    def worker_log(self, index: int) -> Path:
        return self.out_dir / f"{self.name}-worker-{index + 1}.log"


def locust_command(plan: LoadPlan, master_port: int | None = None) -> list[str]:
    """The ``python -m locust`` command line for ``plan`` (its master when it has workers)."""
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(plan.locustfile or DEFAULT_LOCUSTFILE),
        "--headless",
        "--csv",
        str(plan.prefix),
        "--csv-full-history",
        "--html",
        str(plan.html),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--stop-timeout",
        "5",
    ]
    if plan.host:
        cmd += ["--host", plan.host]
    if plan.workers:
        if master_port is None:
            raise TestbedError("a distributed run needs the master's port")
        cmd += [
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(master_port),
            "--expect-workers",
            str(plan.workers),
            "--expect-workers-max-wait",
            str(WORKERS_WAIT_S),
        ]
    if plan.locustfile is not None:
        # Someone else's locustfile: only Locust's own options apply.
        cmd += ["-u", str(plan.users), "-r", str(plan.spawn_rate), "-t", f"{int(plan.duration)}s"]
        return cmd
    cmd += [
        "--tb-pops",
        ",".join(f"{r}={u}" for r, u in sorted(plan.pops.items())),
        "--tb-api-key",
        plan.api_key,
        "--tb-users",
        str(plan.users),
        "--tb-spawn-rate",
        str(plan.spawn_rate),
        "--tb-rate",
        str(plan.rate or 0),
        "--tb-shape",
        plan.shape,
        "--tb-duration",
        str(plan.duration),
        "--tb-checkout-weight",
        str(plan.checkout_weight),
        "--tb-max-error-ratio",
        str(-1 if plan.max_error_ratio is None else plan.max_error_ratio),
        "--tb-max-p99-ms",
        str(-1 if plan.max_p99_ms is None else plan.max_p99_ms),
    ]
    cmd += OPEN_CLASSES if plan.rate else CLOSED_CLASSES
    return cmd


def worker_command(plan: LoadPlan, master_port: int) -> list[str]:
    """One worker's command line: the same locustfile; the master sends it the options."""
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(plan.locustfile or DEFAULT_LOCUSTFILE),
        "--worker",
        "--master-host",
        "127.0.0.1",
        "--master-port",
        str(master_port),
        "--loglevel",
        "WARNING",
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_summary(prefix: Path) -> dict[str, dict[str, Any]]:
    """Locust's final ``<prefix>_stats.csv`` as ``{name: {requests, failures, p50, ...}}``."""
    path = Path(f"{prefix}_stats.csv")
    out: dict[str, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return out

    def num(raw: str | None) -> float | None:
        if raw is None or raw in ("", "N/A"):
            return None
        try:
            return float(raw)
        except ValueError:
            return None

    for row in csv.DictReader(text.splitlines()):
        requests = int(num(row.get("Request Count")) or 0)
        failures = int(num(row.get("Failure Count")) or 0)
        name = row.get("Name") or "?"
        entry = out.setdefault(name, {"requests": 0, "failures": 0})
        entry["requests"] += requests
        entry["failures"] += failures
        entry["error_ratio"] = (
            round(entry["failures"] / entry["requests"], 5) if entry["requests"] else None
        )
        for key, col in (("p50", "50%"), ("p95", "95%"), ("p99", "99%"), ("rps", "Requests/s")):
            value = num(row.get(col))
            if value is not None:
                entry[key] = max(value, entry.get(key) or 0.0)
    return out


class LocustRun:
    """One Locust run (a process, or a master and its workers): start, read live stats, wait or
    stop, read the summary."""

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.stats = LocustStats.for_prefix(plan.prefix)
        self.proc: asyncio.subprocess.Process | None = None
        self.workers: list[asyncio.subprocess.Process] = []
        self.master_port: int | None = None
        self.started_at: float | None = None
        self._logs: list[IO[bytes]] = []

    @property
    def command(self) -> list[str]:
        """The (master's) command line, as started."""
        return locust_command(self.plan, self.master_port)

    async def start(self) -> None:
        self.plan.out_dir.mkdir(parents=True, exist_ok=True)
        if self.plan.workers:
            self.master_port = _free_port()
        self.proc = await self._spawn(self.command, self.plan.log)
        self.started_at = time.time()
        try:
            for i in range(self.plan.workers):
                assert self.master_port is not None
                cmd = worker_command(self.plan, self.master_port)
                self.workers.append(await self._spawn(cmd, self.plan.worker_log(i)))
        except BaseException:
            await self.stop(grace=5)
            raise

    async def _spawn(self, cmd: list[str], log_path: Path) -> asyncio.subprocess.Process:
        log = await asyncio.to_thread(log_path.open, "ab")
        self._logs.append(log)
        return await asyncio.create_subprocess_exec(
            *cmd,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # Ctrl-C reaches us, and we stop Locust in order
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def refresh(self) -> None:
        await asyncio.to_thread(self.stats.refresh)

    async def wait(self, within: float | None = None) -> int:
        if self.proc is None:
            raise TestbedError("locust was not started")
        try:
            code = await asyncio.wait_for(self.proc.wait(), within)
        finally:
            await self.refresh()
        # The master told its workers to quit as it ended; stop any that did not.
        await self._stop_workers(grace=10)
        self._close_logs()
        return code

    async def stop(self, grace: float = 15.0) -> int | None:
        """SIGINT (Locust stops its users and writes its reports), SIGKILL after ``grace``.

        The master goes first (it stops its workers' users and writes the reports from their
        statistics), then any worker still running."""
        try:
            if self.proc is not None:
                await _interrupt(self.proc, grace)
        finally:
            await self._stop_workers(grace=5)
            self._close_logs()
        if self.proc is None:
            return None
        await self.refresh()
        return self.proc.returncode

    async def _stop_workers(self, grace: float) -> None:
        """Give the workers ``grace`` seconds to quit as their master told them, then SIGINT
        and SIGKILL; when cancelled (Ctrl-C), kill them at once: none is left behind."""
        running = [w for w in self.workers if w.returncode is None]
        if not running:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*(w.wait() for w in running)), grace)
        except TimeoutError:
            await asyncio.gather(*(_interrupt(w, 5.0) for w in running))
        except BaseException:
            for w in running:
                _kill(w)
            raise

    def _close_logs(self) -> None:
        for log in self._logs:
            log.close()
        self._logs.clear()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the master's log (and of each worker's, when a worker failed)."""
        tails = [_tail(self.plan.log, lines)]
        for i, w in enumerate(self.workers):
            if w.returncode not in (None, 0):
                tails.append(
                    f"worker {i + 1} ({w.returncode}):\n{_tail(self.plan.worker_log(i), lines)}"
                )
        return "\n".join(t for t in tails if t)

    def summary(self) -> dict[str, dict[str, Any]]:
        return read_summary(self.plan.prefix)

    def reports(self) -> dict[str, str]:
        p = self.plan
        return {
            "html": str(p.html),
            "stats_csv": f"{p.prefix}_stats.csv",
            "history_csv": f"{p.prefix}_stats_history.csv",
            "failures_csv": f"{p.prefix}_failures.csv",
            "log": str(p.log),
            **{f"worker_{i + 1}_log": str(p.worker_log(i)) for i in range(p.workers)},
        }


async def _interrupt(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGINT, then SIGKILL when ``proc`` has not exited after ``grace`` seconds."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        _kill(proc)
        await proc.wait()
    except BaseException:
        _kill(proc)
        raise


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
