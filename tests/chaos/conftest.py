"""Fixtures for chaos tests: a real Toxiproxy server and a small real upstream app."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.processes import REPO_ROOT, free_port

TOXIPROXY_BIN = REPO_ROOT / "tools" / "bin" / "toxiproxy-server"


@pytest.fixture
def toxiproxy_url(tmp_path: Path) -> Iterator[str]:
    """A real toxiproxy-server on a free loopback port, stopped at the end of the test."""
    if not TOXIPROXY_BIN.exists():
        pytest.skip("toxiproxy-server is not built (run scripts/setup.sh)")
    port = free_port()
    log = (tmp_path / "toxiproxy.log").open("wb")
    proc = subprocess.Popen(
        [str(TOXIPROXY_BIN), "-host", "127.0.0.1", "-port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(url + "/version", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("toxiproxy-server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="x" * int(request.query.get("size", "5")))


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A small real aiohttp app on a real socket; yields its ``host:port``."""
    app = web.Application()
    app.router.add_get("/", _hello)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.close()


async def timed_get(url: str, within: float = 5.0) -> tuple[float, int | str]:
    """Seconds a GET took and its status (or the error's class name)."""
    start = time.monotonic()
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within)) as s,
            s.get(url) as resp,
        ):
            await resp.read()
            return time.monotonic() - start, resp.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        return time.monotonic() - start, type(exc).__name__
