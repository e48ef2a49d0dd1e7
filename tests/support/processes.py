"""Start real testbed processes for tests, on loopback ports that never collide, and stop them.

Usage (the ``spawn`` fixture in ``tests/conftest.py`` wraps this)::

    proc = spawner.start("services.catalog", env={"TESTBED_RUN_DIR": str(tmp_path)})
    await proc.wait_ready()
    ... proc.url ...
    proc.kill()            # SIGKILL, as a crash would
    proc.restart()         # same ports, same env

Every process started through a ``Spawner`` is stopped when the spawner closes, also when the
test fails. Output goes to ``<log_dir>/<name>.log`` so a failing test can show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS just handed out (so parallel runs never collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """One real process: a ``python -m module`` with its env, ports and log file."""

    name: str
    module: str
    env: dict[str, str]
    port: int
    admin_port: int
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    _log_file: object | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            raise RuntimeError(f"{self.name} is already running")
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file = log
        self.popen = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    async def wait_ready(self, within: float = 20.0, path: str = "/readyz") -> None:
        """Wait until the process answers 200 on ``path``; fail with its log if it dies."""
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(self.url + path) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {within}s:\n{self.log_tail()}")

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL, as a crash would; waits until the process is gone."""
        if self.popen is None:
            return
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL after ``timeout``; returns the exit code."""
        if self.popen is None:
            return None
        if self.alive():
            self.signal(signal.SIGCONT)  # a frozen process cannot handle SIGTERM
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None
        return self.popen.returncode

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Spawner:
    """Starts processes for one test and stops every one of them at the end."""

    log_dir: Path
    base_env: Mapping[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        module: str,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        admin_port: int | None = None,
        start: bool = True,
    ) -> Proc:
        """Start ``python -m module`` with TESTBED_* ports filled in; returns the handle."""
        port = port or free_port()
        admin_port = admin_port or free_port()
        name = name or f"{module.rsplit('.', 1)[-1]}-{port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TESTBED_", "OTEL_"))}
        full_env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "TESTBED_HOST": "127.0.0.1",
                "TESTBED_PORT": str(port),
                "TESTBED_ADMIN_PORT": str(admin_port),
                "TESTBED_INSTANCE_ID": name,
                "TESTBED_LOG_FORMAT": "json",
                "TESTBED_DRAIN_SECONDS": "1",
            }
        )
        full_env.update(self.base_env)
        full_env.update(env or {})
        proc = Proc(
            name=name,
            module=module,
            env=full_env,
            port=port,
            admin_port=admin_port,
            log_path=self.log_dir / f"{name}.log",
        )
        self.procs.append(proc)
        if start:
            proc.start()
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(timeout=5)
