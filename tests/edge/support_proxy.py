"""Real upstreams for the balancer and CDN tests: small aiohttp apps on real loopback sockets,
and scripted raw-socket upstreams for the balancer's HTTP client.

``Upstream`` runs in the test's event loop (so a test can look at what it received and steer
it: fail readiness, hold a response half-sent). Run as ``python -m tests.edge.support_proxy``
the same app is a separate process (``TESTBED_PORT``, name from ``TESTBED_INSTANCE_ID``) that
tests can kill.

Routes::

    GET  /readyz            200, or 503 after ``ready = False``
    *    /echo              JSON: the upstream's name, method, path, headers, body length
    GET  /slow?s=1.5        answers after s seconds (records cancellations)
    GET  /stream?chunks=N   N chunks of 64 KiB; the second waits for ``release`` (in-process)
    POST /upload            reads the body chunk by chunk; sets ``upload_started`` on the first
    GET  /cached/{name}     a response whose headers come from the query (``cc=``, ``etag=``...)

``RawUpstream`` reads requests itself and lets a test write any bytes back (broken framing,
resets mid-headers, stalls, answers in pieces) and counts what it saw per connection, which an
aiohttp upstream cannot show. ``proxy_client`` serves the balancer's ``Proxy`` on a plain
aiohttp app (no health checker, no telemetry: the request path alone), over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from edge.balancer.app import add_proxy_route, upstream_client
from edge.balancer.config import BalancerConfig
from edge.balancer.metrics import BalancerMetrics
from edge.balancer.pool import UpstreamPool
from edge.balancer.proxy import Proxy
from edge.cdn.policy import format_http_date
from mesh.discovery import StaticDiscovery
from mesh.process import ProcessConfig

CHUNK = 64 * 1024


@dataclass
class UpstreamState:
    """What one upstream saw, and the knobs a test turns."""

    name: str
    ready: bool = True
    hits: Counter[str] = field(default_factory=Counter)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    upload_started: asyncio.Event = field(default_factory=asyncio.Event)
    status_override: int | None = None
    delay: float = 0.0
    version: int = 1
    headers_log: list[dict[str, str]] = field(default_factory=list)
    conditional_log: list[tuple[str | None, str | None]] = field(default_factory=list)


STATE_KEY = web.AppKey("upstream_state", UpstreamState)


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.json_response({"ready": state.ready}, status=200 if state.ready else 503)


async def echo(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.hits["/echo"] += 1
    body = await request.read()
    state.headers_log.append(dict(request.headers))
    headers = {
        "X-Upstream": state.name,
        "Connection": "X-Hop",
        "X-Hop": "must-not-pass",
        "Keep-Alive": "timeout=5",
    }
    return web.json_response(
        {
            "name": state.name,
            "method": request.method,
            "path": request.path_qs,
            "headers": {k: v for k, v in request.headers.items()},
            "body_length": len(body),
        },
        headers=headers,
    )


async def slow(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.hits["/slow"] += 1
    try:
        await asyncio.sleep(float(request.query.get("s", "1")))
    except asyncio.CancelledError:
        state.cancelled.set()
        raise
    return web.json_response({"name": state.name})


async def stream(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    chunks = int(request.query.get("chunks", "64"))
    response = web.StreamResponse(headers={"X-Upstream": state.name})
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    await response.write(b"a" * CHUNK)
    await state.release.wait()
    for _ in range(chunks - 1):
        await response.write(b"b" * CHUNK)
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    total = 0
    async for chunk in request.content.iter_any():
        if total == 0:
            state.upload_started.set()
        total += len(chunk)
    return web.json_response({"name": state.name, "received": total})


async def cached(request: web.Request) -> web.Response:
    """An origin resource whose caching headers the test chooses through the query."""
    state = request.app[STATE_KEY]
    name = request.match_info["name"]
    state.hits[name] += 1
    q = request.query
    state.conditional_log.append(
        (request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since"))
    )
    if state.delay:
        await asyncio.sleep(state.delay)
    if state.status_override is not None:
        return web.json_response({"error": "origin failing"}, status=state.status_override)
    headers: dict[str, str] = {"Date": format_http_date(time.time())}
    if "cc" in q:
        headers["Cache-Control"] = q["cc"]
    if "vary" in q:
        headers["Vary"] = q["vary"]
    etag = f'"{name}-v{state.version}"' if q.get("etag") == "1" else None
    if etag is not None:
        headers["ETag"] = etag
        if request.headers.get("If-None-Match") == etag:
            headers["X-Revalidated"] = "1"
            return web.Response(status=304, headers=headers)
    if q.get("lm") == "1":
        headers["Last-Modified"] = format_http_date(1_700_000_000 + state.version)
    size = int(q.get("size", "0"))
    lang = request.headers.get("Accept-Language", "")
    body = f"{name} v{state.version} {lang}".encode() + b"x" * size
    return web.Response(body=body, headers=headers, content_type="text/plain")


def create_upstream_app(state: UpstreamState) -> web.Application:
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/slow", slow)
    app.router.add_get("/stream", stream)
    app.router.add_post("/upload", upload)
    app.router.add_get("/cached/{name}", cached)
    return app


class Upstream:
    """An upstream app on a real loopback socket, in the test's loop."""

    def __init__(self, name: str, *, configure: Callable[[web.Application], None] | None = None):
        self.state = UpstreamState(name=name)
        self.app = create_upstream_app(self.state)
        if configure is not None:
            configure(self.app)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def start(self, port: int = 0) -> Upstream:
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        sockets = self._runner.addresses
        self.port = int(sockets[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# -- scripted upstreams on raw sockets, for the balancer's HTTP client ----------------------


@dataclass
class Received:
    """One request as the upstream read it."""

    conn: int  # which connection carried it (1-based, in order of acceptance)
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Exchange:
    """What an answer function gets: the request and the connection's streams."""

    request: Received
    nth: int  # the request's number on its connection (1-based)
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


Answer = Callable[[Exchange], Awaitable[bool]]  # True: keep the connection for more requests


def http(
    status: int = 200,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
    *,
    reason: str = "OK",
    length: bool = True,
    version: str = "1.1",
) -> bytes:
    """An answer's bytes; Content-Length is added unless ``length`` is False."""
    lines = [f"HTTP/{version} {status} {reason}", *(f"{k}: {v}" for k, v in headers)]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_body(reader: asyncio.StreamReader, request: Received) -> bytes:
    """The request's body, framed by Content-Length or chunked."""
    length = request.header("Content-Length")
    if length is not None:
        return await reader.readexactly(int(length))
    if "chunked" in (request.header("Transfer-Encoding") or ""):
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return b""


async def _read_request(reader: asyncio.StreamReader, conn: int) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None  # the balancer closed the connection between requests
        raise
    first, *lines = head.decode("latin-1").split("\r\n")
    method, target, _ = first.split(" ", 2)
    headers = []
    for line in lines:
        if line:
            key, _, value = line.partition(":")
            headers.append((key.strip(), value.strip()))
    return Received(conn=conn, method=method, target=target, headers=headers)


@dataclass
class RawUpstream:
    """An upstream that answers with ``answer`` on a real loopback socket.

    With ``bodies`` (the default) each request's body is read before ``answer`` runs; without,
    ``answer`` reads it (``read_body``) when it chooses.
    """

    answer: Answer
    bodies: bool = True
    connections: int = 0
    received: list[Received] = field(default_factory=list)
    peer_closed: list[int] = field(default_factory=list)  # connections the balancer closed
    _server: asyncio.Server | None = None
    _closed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def proxied(self) -> list[Received]:
        return [r for r in self.received if r.target != "/readyz"]

    async def wait_peer_closed(self) -> None:
        """Until the balancer closes one of its connections here."""
        await self._closed.wait()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        conn = self.connections
        nth = 0
        try:
            while True:
                request = await _read_request(reader, conn)
                if request is None:
                    self._peer_closed(conn)
                    return
                if self.bodies:
                    request.body = await read_body(reader, request)
                nth += 1
                self.received.append(request)
                if not await self.answer(Exchange(request, nth, reader, writer)):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self._peer_closed(conn)
        finally:
            self._tasks.discard(task)
            writer.close()

    def _peer_closed(self, conn: int) -> None:
        self.peer_closed.append(conn)
        self._closed.set()


def ok(body: bytes = b"hello", headers: Iterable[tuple[str, str]] = ()) -> Answer:
    """An answer function: 200 with ``body``, keep-alive."""

    async def answer(ex: Exchange) -> bool:
        ex.writer.write(http(200, body, headers))
        await ex.writer.drain()
        return True

    return answer


@contextlib.asynccontextmanager
async def raw_upstreams(*answers: Answer, bodies: bool = True) -> AsyncIterator[list[RawUpstream]]:
    ups = [await RawUpstream(a, bodies=bodies).start() for a in answers]
    try:
        yield ups
    finally:
        for up in ups:
            await up.stop()


PROXY_KEY = web.AppKey("test_proxy", Proxy)


@contextlib.asynccontextmanager
async def proxy_client(
    addresses: list[str], **overrides: object
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Proxy]]:
    """The balancer's request path (``Proxy`` and its client) over ``addresses``, on a plain
    app served on a loopback port; yields a client for it and the proxy."""
    values: dict[str, object] = {"read_timeout": 5.0, "connect_timeout": 1.0}
    values.update(overrides)
    process = ProcessConfig(service="balancer", instance_id="lb-test")
    config = BalancerConfig(process=process, **values)  # type: ignore[arg-type]
    metrics = BalancerMetrics(CollectorRegistry())
    pool = UpstreamPool(config, StaticDiscovery({"gateway": addresses}), metrics)
    app = web.Application()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        client = upstream_client(config)
        app[PROXY_KEY] = Proxy(config, pool, client, metrics)
        yield
        await client.close()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await request.app[PROXY_KEY].handle(request)

    app.cleanup_ctx.append(resources)
    add_proxy_route(app, handle)
    async with TestClient(TestServer(app)) as client:
        yield client, app[PROXY_KEY]


def main() -> None:
    """``python -m tests.edge.support_proxy``: the upstream app as its own process."""
    name = os.environ.get("TESTBED_INSTANCE_ID", "upstream")
    port = int(os.environ["TESTBED_PORT"])
    app = create_upstream_app(UpstreamState(name=name))
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
