"""The four servers a raw request is sent to, and a raw-socket client that classifies answers.

- ``pop``: a CDN PoP (``edge.cdn``) as ``observability.app.run`` serves it (fast lane, wire
  lane), its origin the backend;
- ``balancer``: the load balancer (``edge.balancer``) served the same way, its one upstream
  the backend;
- ``aiohttp``: aiohttp's own server with the backend's handler;
- ``haproxy``: Debian's HAProxy in front of the backend (a generated config).

The Python servers run on an event loop (uvloop, as the processes do) in a thread of their
own, so the test sends from blocking sockets and the servers' CPU time is their thread's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from edge.balancer import BalancerConfig
from edge.balancer import create_app as create_balancer
from edge.cdn import CdnConfig
from edge.cdn import create_app as create_pop
from edge.front.wire import WIRE_LANE_KEY, FrontLimits, WireSite
from mesh.discovery import StaticDiscovery
from mesh.process import ProcessConfig
from observability.app import _listening, event_loop_factory
from observability.sampling import ParentBasedRateLimiting
from tests.edge.front.corpus import BIG, Case
from tests.support.processes import free_port

WIRE = ("pop", "balancer")
TARGETS = ("pop", "balancer", "aiohttp", "haproxy")
# Short deadlines, so slow clients are cut within the corpus's time; HAProxy's alike.
LIMITS = FrontLimits(request_timeout=1.0, keepalive_timeout=3.0, write_timeout=2.0)
HAPROXY_CONFIG = """global
    maxconn 256
defaults
    mode http
    timeout connect 1s
    timeout client 2s
    timeout server 5s
    timeout http-request 1s
    timeout http-keep-alive 3s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server b0 127.0.0.1:{backend}
"""


async def backend(request: web.Request) -> web.Response:
    """Every path answers 200 (cacheable, so the PoP answers repeats on its wire lane)."""
    await request.read()
    body = b"b" * BIG if request.path == "/big" else b"ok"
    return web.Response(body=body, headers={"Cache-Control": "public, max-age=600"})


def backend_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", backend)
    return app


@dataclass(frozen=True)
class Outcome:
    """What came back: the status of each answer, and whether the server closed."""

    statuses: tuple[int, ...]
    closed: bool

    @property
    def klass(self) -> str:
        """``closed`` (no answer, connection closed), ``held`` (no answer, still open), else
        each answer's class: ``4xx`` for any client error, else the status."""
        if not self.statuses:
            return "closed" if self.closed else "held"
        return " ".join("4xx" if 400 <= s < 500 else str(s) for s in self.statuses)

    def __str__(self) -> str:
        if not self.statuses:
            return self.klass
        return " ".join(map(str, self.statuses)) + (" ·" if self.closed else "")


class _Statuses:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.statuses: list[int] = []

    def on_headers_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())


def exchange(port: int, case: Case) -> Outcome:
    """Send ``case`` on a new connection to ``port``; read as the case says."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if not case.read:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    answers = _Statuses()
    closed = False
    try:
        sock.settimeout(2.0)
        sock.connect(("127.0.0.1", port))
        deadline = time.monotonic() + case.wait
        with contextlib.suppress(OSError):  # the server may cut the sending short
            for i, piece in enumerate(case.send):
                if i and case.gap:
                    time.sleep(case.gap)
                sock.sendall(piece)
        if not case.read:
            time.sleep(max(0.0, deadline - time.monotonic()))
            return Outcome((), _cut(sock))
        while len(answers.statuses) < case.answers:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                closed = True
                break
            answers.parser.feed_data(data)
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    except (TimeoutError, httptools.HttpParserError):
        pass
    finally:
        sock.close()
    return Outcome(tuple(answers.statuses), closed)


def _cut(sock: socket.socket) -> bool:
    """Whether the server has cut a connection whose answers were not read: read what is
    queued (a live server goes on sending) until the end, or until nothing comes for 1 s."""
    sock.settimeout(1.0)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


class Servers:
    """The Python servers in their thread, and HAProxy."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.ports = {name: free_port() for name in TARGETS}
        self.backend_port = free_port()
        self._fronts: dict[str, tuple[WireSite, web.Server]] = {}
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        factory = event_loop_factory()
        self.loop = factory() if factory is not None else asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="edge-servers", daemon=True)
        self._haproxy: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Servers:
        self._thread.start()
        if not self._ready.wait(30) or self._failed is not None:
            raise RuntimeError(f"the edge servers did not start: {self._failed!r}")
        config = self.run_dir / "haproxy.cfg"
        config.write_text(
            HAPROXY_CONFIG.format(port=self.ports["haproxy"], backend=self.backend_port)
        )
        haproxy = shutil.which("haproxy")
        assert haproxy is not None
        self._haproxy = subprocess.Popen(
            [haproxy, "-f", str(config), "-db"],
            stdout=subprocess.DEVNULL,
            stderr=(self.run_dir / "haproxy.log").open("wb"),
        )
        _wait_listening(self.ports["haproxy"])
        self.warm()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._haproxy is not None:
            self._haproxy.terminate()
            try:
                self._haproxy.wait(10)
            except subprocess.TimeoutExpired:
                self._haproxy.kill()
                self._haproxy.wait()
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by __enter__
            self._failed = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            for port in (self.backend_port, self.ports["aiohttp"]):
                runner = web.AppRunner(backend_app(), access_log=None, handle_signals=False)
                await runner.setup()
                stack.push_async_callback(runner.cleanup)
                await web.TCPSite(runner, "127.0.0.1", port).start()
            origin = f"127.0.0.1:{self.backend_port}"
            apps = {
                "pop": create_pop(
                    CdnConfig(
                        process=ProcessConfig(service="cdn-us", instance_id="pop-us"),
                        origin_url=f"http://{origin}",
                    ),
                    registry=CollectorRegistry(),
                    tracer_provider=TracerProvider(sampler=ParentBasedRateLimiting(0)),
                ),
                "balancer": create_balancer(
                    BalancerConfig(process=ProcessConfig(service="balancer", instance_id="lb")),
                    discovery=StaticDiscovery({"gateway": [origin]}),
                    registry=CollectorRegistry(),
                    tracer_provider=TracerProvider(sampler=ParentBasedRateLimiting(0)),
                ),
            }
            for name, app in apps.items():
                app[WIRE_LANE_KEY] = dataclasses.replace(app[WIRE_LANE_KEY], limits=LIMITS)
                runner = await stack.enter_async_context(
                    _listening(app, "127.0.0.1", self.ports[name], 1.0)
                )
                (site,) = (s for s in runner.sites if isinstance(s, WireSite))
                assert runner.server is not None
                self._fronts[name] = (site, runner.server)
            self._ready.set()
            await self._stop.wait()

    # -- what the test asks ----------------------------------------------------------------------

    def warm(self) -> None:
        """Ready: every target answers a plain GET (the balancer's upstream is healthy, the
        PoP has /x and /big cached for its wire lane)."""
        for name in TARGETS:
            for path in ("/x", "/big"):
                _wait_answer(self.ports[name], path)

    def _call(self, fn: Any) -> Any:
        async def run() -> Any:
            return fn()

        future: Future[Any] = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return future.result(10)

    def connections(self, name: str) -> int:
        """Open client connections of a wire target: the front's and those it gave aiohttp."""
        site, server = self._fronts[name]
        return int(self._call(lambda: len(site.front.connections) + len(server.connections)))

    def cpu_seconds(self) -> float:
        """CPU time of the servers' thread so far."""
        ident = self._thread.ident
        assert ident is not None
        return time.clock_gettime(time.pthread_getcpuclockid(ident))

    def settled(self, within: float = 5.0) -> dict[str, int]:
        """The wire targets' connection counts once they drop to 0 (or after ``within``)."""
        deadline = time.monotonic() + within
        while True:
            counts = {name: self.connections(name) for name in WIRE}
            if not any(counts.values()) or time.monotonic() > deadline:
                return counts
            time.sleep(0.1)


def _wait_listening(port: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _wait_answer(port: int, path: str, within: float = 10.0) -> None:
    case = Case("warm", path, (f"GET {path} HTTP/1.1\r\nHost: edge.test\r\n\r\n".encode(),))
    deadline = time.monotonic() + within
    while exchange(port, case).statuses[:1] != (200,):
        if time.monotonic() > deadline:
            raise RuntimeError(f"127.0.0.1:{port}{path} did not answer 200 within {within}s")
        time.sleep(0.1)


@contextlib.contextmanager
def servers(run_dir: Path) -> Iterator[Servers]:
    with Servers(run_dir) as s:
        yield s
