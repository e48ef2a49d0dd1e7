"""Run Locust headless as a subprocess (``python -m locust``) and watch it while it runs.

Locust runs on gevent, which must monkey-patch the interpreter before anything else is
imported; running it in its own process keeps gevent out of the asyncio processes (the CLI,
the chaos runner) and lets Ctrl-C and timeouts stop it cleanly. Live statistics come from its
CSV history (``load.stats``); the CSV and HTML reports land in the plan's folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from load.shapes import ShapeName
from load.stats import LocustStats
from mesh.errors import TestbedError

__all__ = ["DEFAULT_LOCUSTFILE", "LoadPlan", "LocustRun", "locust_command", "read_summary"]

DEFAULT_LOCUSTFILE = Path(__file__).with_name("locustfile.py")
CLOSED_CLASSES = ("ShopperUS", "ShopperEU", "ShopperSA")
OPEN_CLASSES = ("ArrivalsUS", "ArrivalsEU", "ArrivalsSA")


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

    @property
    def prefix(self) -> Path:
        return self.out_dir / self.name

    @property
    def html(self) -> Path:
        return self.out_dir / f"{self.name}.html"

    @property
    def log(self) -> Path:
        return self.out_dir / f"{self.name}.log"


def locust_command(plan: LoadPlan) -> list[str]:
    """The ``python -m locust`` command line for ``plan``."""
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
    """One Locust subprocess: start, read live stats, wait or stop, read the summary."""

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.stats = LocustStats.for_prefix(plan.prefix)
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at: float | None = None
        self._log: IO[bytes] | None = None

    async def start(self) -> None:
        self.plan.out_dir.mkdir(parents=True, exist_ok=True)
        self._log = await asyncio.to_thread(self.plan.log.open, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            *locust_command(self.plan),
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us, and we stop Locust in order
        )
        self.started_at = time.time()

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
        self._close_log()
        return code

    async def stop(self, grace: float = 15.0) -> int | None:
        """SIGINT (Locust stops its users and writes its reports), SIGKILL after ``grace``."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        await self.refresh()
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.plan.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

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
        }
