"""The four servers a raw request is sent to, and a raw-socket client that classifies answers.

- ``pop``: a CDN PoP (``edge.cdn``) as ``observability.app.run`` serves it (fast lane, wire
  lane), its origin the backend;
- ``balancer``: the load balancer (``edge.balancer``) served the same way, its one upstream
  the backend;
- ``aiohttp``: aiohttp's own server with the backend's handler;
- ``gateway``: the API gateway (``edge.gateway``), served the same way (aiohttp's server
  only: it has no wire lane); it answers 404 for the corpus's paths, so it is held to the
  edge's invariants (no 5xx, errors as problem+json, no connection left) but not compared;
- ``haproxy``: Debian's HAProxy in front of a backend of its own (a generated config).

The Python servers run on an event loop (uvloop, as the processes do) in a thread of their
own, so the test sends from blocking sockets and the servers' CPU time is their thread's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import select
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
from edge.front.guard import FRONT_LIMITS_KEY
from edge.front.wire import WIRE_LANE_KEY, FrontLimits, WireSite
from edge.gateway import GatewayConfig
from edge.gateway import create_app as create_gateway
from mesh.discovery import StaticDiscovery
from mesh.process import ProcessConfig
from observability.app import _listening, event_loop_factory
from observability.sampling import ParentBasedRateLimiting
from tests.edge.front.corpus import BIG, Case
from tests.support.processes import free_port

WIRE = ("pop", "balancer")
EDGE = ("pop", "balancer", "gateway")
TARGETS = ("pop", "balancer", "gateway", "aiohttp", "haproxy")
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


SEEN_KEY = web.AppKey("seen", list[tuple[str, bool]])
"""The requests a backend got: (path, whether its body came whole)."""


async def backend(request: web.Request) -> web.Response:
    """Every path answers 200 (cacheable, so the PoP answers repeats on its wire lane)."""
    try:
        await request.read()
    except ConnectionError:  # the request was cut (a slow-body case)
        request.app[SEEN_KEY].append((request.path, False))
        raise
    request.app[SEEN_KEY].append((request.path, True))
    body = b"b" * BIG if request.path == "/big" else b"ok"
    return web.Response(body=body, headers={"Cache-Control": "public, max-age=600"})


RELAYED = "X-Backend"
"""On every answer of a backend, so an edge target's relayed answers are told from its own
(the balancer relays the backend's 404 for ``OPTIONS *`` as it is)."""


async def mark(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[RELAYED] = "1"


def backend_app() -> web.Application:
    app = web.Application()
    app[SEEN_KEY] = []
    app.router.add_route("*", "/{tail:.*}", backend)
    app.on_response_prepare.append(mark)
    return app


@dataclass(frozen=True)
class Answer:
    """One whole answer: its status, Content-Type and body, and whether a backend made it
    (``RELAYED``)."""

    status: int
    content_type: str
    body: bytes
    relayed: bool = False


@dataclass(frozen=True)
class Outcome:
    """What came back: the status of each answer, whether the server closed, the whole
    answers, and when the last answer or the close came (seconds after connecting)."""

    statuses: tuple[int, ...]
    closed: bool
    answers: tuple[Answer, ...] = ()
    elapsed: float = 0.0

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


class _Answers:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.statuses: list[int] = []
        self.answers: list[Answer] = []
        self._type = ""
        self._relayed = False
        self._body: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-type":
            self._type = value.decode("latin-1")
        elif lower == b"x-backend":
            self._relayed = True

    def on_headers_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self._body)
        self.answers.append(Answer(self.statuses[-1], self._type, body, self._relayed))
        self._type = ""
        self._relayed = False
        self._body = []


def exchange(port: int, case: Case) -> Outcome:
    """Send ``case`` on a new connection to ``port``; read as the case says."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if not case.read:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    answers = _Answers()
    closed = False
    started = time.monotonic()
    last = started
    try:
        sock.settimeout(2.0)
        sock.connect(("127.0.0.1", port))
        deadline = time.monotonic() + case.wait
        with contextlib.suppress(OSError):  # the server may cut the sending short
            for i, piece in enumerate(case.send):
                if i and case.gap:
                    readable, _, _ = select.select([sock], [], [], case.gap)
                    if readable and case.until_answered:
                        break  # the server answered or closed: a client stops sending
                sock.sendall(piece)
        if not case.read:
            time.sleep(max(0.0, deadline - time.monotonic()))
            return Outcome((), _cut(sock))
        # Whole answers (a HEAD answer never is: it waits), then the close if asked.
        while len(answers.answers) < case.answers or case.closes:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            data = sock.recv(65536)
            last = time.monotonic()
            if not data:
                closed = True
                break
            answers.parser.feed_data(data)
    except (ConnectionResetError, BrokenPipeError):
        closed = True
        last = time.monotonic()
    except (TimeoutError, httptools.HttpParserError):
        pass
    finally:
        sock.close()
    return Outcome(tuple(answers.statuses), closed, tuple(answers.answers), last - started)


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
        self.backend_port = free_port()  # the PoP's origin, the balancer's upstream
        self.haproxy_backend_port = free_port()  # HAProxy's own, so `seen` is the edge's
        self.seen: list[tuple[str, bool]] = []  # what the edge's backend got
        self._fronts: dict[str, tuple[WireSite | None, web.Server]] = {}
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
            HAPROXY_CONFIG.format(port=self.ports["haproxy"], backend=self.haproxy_backend_port)
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
            for port in (self.backend_port, self.haproxy_backend_port, self.ports["aiohttp"]):
                app = backend_app()
                if port == self.backend_port:
                    self.seen = app[SEEN_KEY]
                runner = web.AppRunner(app, access_log=None, handle_signals=False)
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
                "gateway": create_gateway(
                    GatewayConfig(process=ProcessConfig(service="gateway", instance_id="gw")),
                    discovery=StaticDiscovery({}),
                    registry=CollectorRegistry(),
                    tracer_provider=TracerProvider(sampler=ParentBasedRateLimiting(0)),
                ),
            }
            for name, app in apps.items():
                if WIRE_LANE_KEY in app:
                    app[WIRE_LANE_KEY] = dataclasses.replace(app[WIRE_LANE_KEY], limits=LIMITS)
                else:
                    app[FRONT_LIMITS_KEY] = LIMITS
                runner = await stack.enter_async_context(
                    _listening(app, "127.0.0.1", self.ports[name], 1.0)
                )
                sites = [s for s in runner.sites if isinstance(s, WireSite)]
                assert runner.server is not None
                self._fronts[name] = (sites[0] if sites else None, runner.server)
            self._ready.set()
            await self._stop.wait()

    # -- what the test asks ----------------------------------------------------------------------

    def warm(self) -> None:
        """Ready: every target answers a plain GET (the balancer's upstream is healthy, the
        PoP has /x and /big cached for its wire lane)."""
        for name in TARGETS:
            for path in ("/healthz",) if name == "gateway" else ("/x", "/big"):
                _wait_answer(self.ports[name], path)

    def _call(self, fn: Any) -> Any:
        async def run() -> Any:
            return fn()

        future: Future[Any] = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return future.result(10)

    def connections(self, name: str) -> int:
        """Open client connections of an edge target: the front's and aiohttp's."""
        site, server = self._fronts[name]
        front = site.front.connections if site is not None else ()
        return int(self._call(lambda: len(front) + len(server.connections)))

    def cpu_seconds(self) -> float:
        """CPU time of the servers' thread so far."""
        ident = self._thread.ident
        assert ident is not None
        return time.clock_gettime(time.pthread_getcpuclockid(ident))

    def settled(self, within: float = 5.0) -> dict[str, int]:
        """The edge targets' connection counts once they drop to 0 (or after ``within``)."""
        deadline = time.monotonic() + within
        while True:
            counts = {name: self.connections(name) for name in EDGE}
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
