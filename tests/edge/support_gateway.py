"""Helpers for the gateway's tests: an in-process gateway app, and the real stack as processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from edge.gateway import GatewayConfig, create_app
from tests.support.processes import Proc, Spawner

DEMO_KEY = "demo-key"
SERVICES = ("catalog", "inventory", "payments", "orders", "recommendations")


def gateway_app(tmp_path: Path, **env: str) -> web.Application:
    """A gateway app built in-process from ``env`` (``GATEWAY_*``/``TESTBED_*`` variables)."""
    full = {"TESTBED_RUN_DIR": str(tmp_path), **env}
    config = GatewayConfig.from_env(full)
    return create_app(config, registry=CollectorRegistry(), tracer_provider=TracerProvider())


@dataclass
class Stack:
    """The five services and one gateway, as real processes."""

    services: dict[str, Proc]
    gateway: Proc


def _upstreams(procs: Mapping[str, Proc]) -> str:
    return ";".join(f"{name}={proc.address}" for name, proc in procs.items())


async def start_stack(
    spawner: Spawner,
    *,
    gateway_env: Mapping[str, str] | None = None,
    service_env: Mapping[str, Mapping[str, str]] | None = None,
) -> Stack:
    """Start the five services and a gateway wired to them by static discovery.

    Payments never declines here (``PAYMENTS_DECLINE_PROBABILITY=0``) unless ``service_env``
    says otherwise, so an order's outcome is deterministic.
    """
    env_of = {"payments": {"PAYMENTS_DECLINE_PROBABILITY": "0"}}
    for name, extra in (service_env or {}).items():
        env_of[name] = {**env_of.get(name, {}), **extra}
    procs: dict[str, Proc] = {}
    # Allocate every process first (not started), so each knows all the others' addresses.
    for name in SERVICES:
        procs[name] = spawner.start(f"services.{name}", name=name, start=False)
    upstreams = _upstreams(procs)
    for name, proc in procs.items():
        proc.env["TESTBED_UPSTREAMS"] = upstreams
        proc.env.update(env_of.get(name, {}))
        proc.start()
    gateway = spawner.start(
        "edge.gateway",
        name="gateway",
        env={"TESTBED_UPSTREAMS": upstreams, **(gateway_env or {})},
    )
    await asyncio.gather(*(p.wait_ready(within=30) for p in (*procs.values(), gateway)))
    return Stack(services=procs, gateway=gateway)


# -- a headless Chromium driven over the Chrome DevTools Protocol ----------------------------

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The path of an installed Chromium, or None."""
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class CdpError(RuntimeError):
    """The browser answered a DevTools command with an error, or a page script threw."""


class Browser:
    """One headless Chromium with a fresh profile, and one page driven by CDP over a websocket.

    Started with ``async with Browser(path, profile_dir) as browser``; the process (and its
    children, which share its process group) is stopped on exit.
    """

    FLAGS = (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
    )

    def __init__(self, executable: str, profile_dir: Path) -> None:
        self.executable = executable
        self.profile_dir = profile_dir
        self._proc: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._next_id = 0
        self.console: list[str] = []

    async def __aenter__(self) -> Browser:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        log = self.profile_dir.parent / "chromium.log"
        with open(log, "ab") as out:  # noqa: ASYNC230 - opening a log file, no I/O wait
            self._proc = await asyncio.create_subprocess_exec(
                self.executable,
                *self.FLAGS,
                f"--user-data-dir={self.profile_dir}",
                "about:blank",
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        try:
            port = await self._devtools_port(within=30.0)
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
            ws_url = await self._page_ws_url(port)
            self._ws = await self._session.ws_connect(ws_url, max_msg_size=64 * 1024 * 1024)
            await self.send("Runtime.enable")
            await self.send("Page.enable")
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()

    async def _devtools_port(self, within: float) -> int:
        """Chromium writes the port it picked into ``DevToolsActivePort`` in the profile."""
        marker = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.returncode is not None:
                raise RuntimeError(f"chromium exited with {self._proc.returncode}")
            if marker.exists():
                first = marker.read_text().splitlines()[:1]
                if first and first[0].isdigit():
                    return int(first[0])
            await asyncio.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    async def _page_ws_url(self, port: int) -> str:
        assert self._session is not None
        for _ in range(100):
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            for target in targets:
                if target.get("type") == "page" and target.get("webSocketDebuggerUrl"):
                    return str(target["webSocketDebuggerUrl"])
            await asyncio.sleep(0.1)
        raise RuntimeError("chromium has no page target")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are noted)."""
        assert self._ws is not None
        self._next_id += 1
        command_id = self._next_id
        await self._ws.send_json({"id": command_id, "method": method, "params": params})
        async with asyncio.timeout(30):
            while True:
                message = await self._ws.receive_json()
                if message.get("method") == "Runtime.consoleAPICalled":
                    args = message["params"].get("args", [])
                    self.console.append(" ".join(str(a.get("value", "")) for a in args))
                if message.get("id") != command_id:
                    continue
                if "error" in message:
                    raise CdpError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    async def navigate(self, url: str) -> None:
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CdpError(f"navigate {url}: {result['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page (awaiting promises) and return its JSON value."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"page script failed: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, *, within: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy (errors count as not yet); return its value."""
        deadline = time.monotonic() + within
        value: Any = None
        while time.monotonic() < deadline:
            try:
                value = await self.evaluate(expression)
            except CdpError as exc:  # e.g. the page is still loading: its elements are missing
                value = exc
            else:
                if value:
                    return value
            await asyncio.sleep(0.1)
        raise TimeoutError(f"page never satisfied {expression!r} (last value {value!r})")
