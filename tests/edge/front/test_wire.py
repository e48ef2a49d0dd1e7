"""The wire lane (``edge.front.wire``) end to end, over loopback sockets in this process.

Each test serves an app on a ``WireSite`` and talks to it with plain asyncio streams, so the
bytes on the wire (pipelining, split writes, HTTP/1.0, ``Connection: close``) are the test's
own. The app's catch-all aiohttp route answers with ``X-Served-By: aiohttp`` and the lane's
handler with ``X-Served-By: wire``, so every answer says who served it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import LogCapture

from edge.front.wire import (
    WIRE_LANE_KEY,
    FrontLimits,
    Reply,
    WireLane,
    WireProtocol,
    WireRequest,
    WireSite,
    origin_target,
)
from mesh.process import ProcessConfig
from observability.app import FAULTS_KEY, IN_FLIGHT_KEY, create_base_app
from observability.faults import ErrorFault
from observability.sampling import ParentBasedRateLimiting
from tests.support.processes import free_port

ROUTE = "/{tail}"
MAX_BODY = 1024
DEADLINE = 5.0
"""Seconds any one read, connect or wait may take before the test fails (a loaded machine's)."""
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
W3C_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
WIRE_HEAD = b"Content-Type: application/json\r\nX-Served-By: wire\r\n"
STREAM_CHUNKS = (b"first,", b"second,", b"third")
BIG_CHUNK = 64 * 1024
BIG_CHUNKS = 192
"""12 MiB: more than the kernel's socket buffers on loopback can hold (4 MiB send buffer at
most here), so a client that does not read holds the sender back."""


HANDLER_VAR: ContextVar[str] = ContextVar("wire_test_handler_var", default="unset")
"""Set by the handler of ``/context`` and never reset: as aiohttp's handlers may."""


def big_chunk(i: int) -> bytes:
    return bytes([i % 251]) * BIG_CHUNK


# -- the app under test ---------------------------------------------------------------------


class LaneHandler:
    """The lane's handler; what it does is chosen by the request's path (default: echo)."""

    def __init__(self) -> None:
        self.served = 0
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.big_sent = 0
        self.hosts: list[str] = []

    async def __call__(self, request: WireRequest, reply: Reply) -> None:
        self.served += 1
        self.hosts.append(request.host)
        path = request.path
        if path == "/boom":
            raise RuntimeError("a bug in the wire handler")
        if path == "/silent":
            return  # no answer at all
        if path == "/wait":
            await self._wait(reply)
        elif path == "/context":
            seen = HANDLER_VAR.get()
            HANDLER_VAR.set(f"set by {request.raw_path}")
            reply.respond(200, b"OK", WIRE_HEAD, seen.encode())
        elif path == "/sleep":
            await asyncio.sleep(float(request.query_string))
            reply.respond(200, b"OK", WIRE_HEAD, b"slept")
        elif path.startswith("/status/"):
            status = int(path.removeprefix("/status/"))
            reply.respond(status, HTTPStatus(status).phrase.encode(), WIRE_HEAD, b"")
        elif path.startswith("/sized/"):
            reply.respond(200, b"OK", WIRE_HEAD, b"x" * int(path.removeprefix("/sized/")))
        elif path == "/stream":
            reply.start_stream(200, b"OK", WIRE_HEAD, None)
            for chunk in STREAM_CHUNKS:
                await reply.send(chunk)
            reply.finish()
        elif path == "/stream-length":
            reply.start_stream(200, b"OK", WIRE_HEAD, sum(map(len, STREAM_CHUNKS)))
            for chunk in STREAM_CHUNKS:
                await reply.send(chunk)
            reply.finish()
        elif path == "/broken-stream":
            reply.start_stream(200, b"OK", WIRE_HEAD, None)
            await reply.send(b"partial")
            raise RuntimeError("failed mid-answer")
        elif path == "/big":
            reply.start_stream(200, b"OK", b"X-Served-By: wire\r\n", BIG_CHUNK * BIG_CHUNKS)
            for i in range(BIG_CHUNKS):
                await reply.send(big_chunk(i))
                self.big_sent += BIG_CHUNK
            reply.finish()
        else:
            self._echo(request, reply)

    async def _wait(self, reply: Reply) -> None:
        self.waiting.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        reply.respond(200, b"OK", WIRE_HEAD, b"released")

    @staticmethod
    def _echo(request: WireRequest, reply: Reply) -> None:
        body = json.dumps(
            {
                "method": request.method,
                "target": request.raw_path,
                "body": request.body.decode("latin-1"),
                "propagate": request.propagate,
            }
        ).encode()
        head = WIRE_HEAD + b"X-Body-Length: %d\r\n" % len(body)
        # ``length`` only counts for a HEAD answer (whose body is not sent).
        reply.respond(200, b"OK", head, body, length=len(body))


async def by_aiohttp(request: web.Request) -> web.Response:
    """The app's own catch-all route: what the lane hands off ends here."""
    body = await request.read()
    if request.path == "/boom":
        raise RuntimeError("a bug in the aiohttp handler")
    answer = {
        "method": request.method,
        "path": request.path,
        "body": body.decode("latin-1"),
        "version": f"{request.version.major}.{request.version.minor}",
    }
    return web.json_response(answer, headers={"X-Served-By": "aiohttp"})


@dataclass
class Served:
    """An app served on a ``WireSite``, and the client connections made to it."""

    app: web.Application
    site: WireSite
    port: int
    handler: LaneHandler
    registry: CollectorRegistry
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def connect(
        self, *, rcvbuf: int | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new client connection (closed at the end of the test). ``rcvbuf``: a small
        receive buffer, so a client that does not read stops the sender soon."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            async with asyncio.timeout(DEADLINE):
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
                reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        self.writers.append(writer)
        return reader, writer

    def count(self, code: int, method: str = "GET", route: str = ROUTE) -> float:
        value = self.registry.get_sample_value(
            "http_server_requests_total", {"method": method, "route": route, "code": str(code)}
        )
        return value or 0.0

    def total(self) -> float:
        """Every request the RED metrics counted, whoever served it."""
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == "http_server_requests_total"
        )

    @property
    def in_flight(self) -> int:
        return self.app[IN_FLIGHT_KEY].count


class Serve(Protocol):
    async def __call__(
        self, *, keepalive_timeout: float = ..., drain: float = ..., limits: FrontLimits = ...
    ) -> Served: ...


@pytest.fixture
def no_new_traces(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """The default sampler, out of credit: no new trace is recorded; parents are followed."""
    provider = TracerProvider(sampler=ParentBasedRateLimiting(0))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
async def serve(process: ProcessConfig, no_new_traces: TracerProvider) -> AsyncIterator[Serve]:
    """Serve apps on the wire lane as ``observability.app.run`` does; all stopped at the end."""
    runners: list[web.AppRunner] = []
    served: list[Served] = []

    async def start(
        *, keepalive_timeout: float = 75.0, drain: float = 2.0, limits: FrontLimits | None = None
    ) -> Served:
        registry = CollectorRegistry()
        app = create_base_app(process, registry=registry, tracer_provider=no_new_traces)
        app.router.add_route("*", "/{tail:.*}", by_aiohttp)
        handler = LaneHandler()
        if limits is None:
            limits = FrontLimits(keepalive_timeout=keepalive_timeout)
        lane = WireLane(ROUTE, handler, max_body=MAX_BODY, limits=limits)
        app[WIRE_LANE_KEY] = lane
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, handler_cancellation=True
        )
        await runner.setup()
        runners.append(runner)
        port = free_port()
        site = WireSite(runner, "127.0.0.1", port, lane, drain=drain)
        await site.start()
        served.append(s := Served(app, site, port, handler, registry))
        return s

    try:
        yield start
    finally:
        for s in served:
            for writer in s.writers:
                writer.close()
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def server(serve: Serve) -> Served:
    return await serve()


# -- a raw HTTP/1.1 client ------------------------------------------------------------------


def request(
    method: str, target: str, *fields: str, body: bytes = b"", version: str = "HTTP/1.1"
) -> bytes:
    """One request's bytes; a ``Content-Length`` field is added when there is a body."""
    lines = [f"{method} {target} {version}", "Host: wiretest", *fields]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get(target: str, *fields: str) -> bytes:
    return request("GET", target, *fields)


@dataclass
class Answer:
    version: str
    status: int
    headers: CIMultiDict[str]
    body: bytes

    @property
    def served_by(self) -> str | None:
        return self.headers.get("X-Served-By")

    def json(self) -> Any:
        return json.loads(self.body)


async def read_head(reader: asyncio.StreamReader) -> tuple[str, int, CIMultiDict[str]]:
    async with asyncio.timeout(DEADLINE):
        line = await reader.readuntil(b"\r\n")
        version, status, _reason = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        headers: CIMultiDict[str] = CIMultiDict()
        while (raw := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, colon, value = raw.decode("latin-1").partition(":")
            assert colon, f"not a header field: {raw!r}"
            headers.add(name, value.strip())
    return version, int(status), headers


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body, checking its framing strictly (no extensions, no trailers)."""
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        if size == 0:
            assert await reader.readexactly(2) == b"\r\n"
            return bytes(body)
        body += await reader.readexactly(size)
        assert await reader.readexactly(2) == b"\r\n"


async def read_answer(reader: asyncio.StreamReader, *, head: bool = False) -> Answer:
    """One answer: its head, then its body as its framing says (none for HEAD, 1xx, 204, 304;
    else chunked, Content-Length, or up to EOF)."""
    version, status, headers = await read_head(reader)
    async with asyncio.timeout(DEADLINE):
        if head or status < 200 or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("Transfer-Encoding", "").lower():
            body = await read_chunked(reader)
        elif "Content-Length" in headers:
            body = await reader.readexactly(int(headers["Content-Length"]))
        else:
            body = await reader.read()
    return Answer(version, status, headers, body)


async def expect_eof(reader: asyncio.StreamReader) -> None:
    """The server closes the connection, sending nothing more."""
    async with asyncio.timeout(DEADLINE):
        assert await reader.read() == b""


async def no_request_in_flight(server: Served) -> None:
    async with asyncio.timeout(DEADLINE):
        await server.app[IN_FLIGHT_KEY].wait_idle()


def sampled(traceparent: str) -> bool:
    match = W3C_TRACEPARENT.fullmatch(traceparent)
    assert match is not None, traceparent
    return bool(int(match[3], 16) & 1)


# -- 1, 2, 3: serving requests ----------------------------------------------------------------


async def test_keep_alive_requests_are_served_by_the_wire_in_order(server: Served) -> None:
    reader, writer = await server.connect()
    for i in range(3):
        writer.write(get(f"/echo/{i}?n={i}"))
        answer = await read_answer(reader)
        assert answer.status == 200
        assert answer.served_by == "wire"
        assert answer.json()["target"] == f"/echo/{i}?n={i}"
        assert "Connection" not in answer.headers
    assert server.handler.served == 3


async def test_pipelined_requests_are_answered_in_order(server: Served) -> None:
    reader, writer = await server.connect()
    writer.write(get("/a") + request("POST", "/b", body=b"beta") + get("/c"))
    answers = [await read_answer(reader) for _ in range(3)]
    assert [a.served_by for a in answers] == ["wire"] * 3
    assert [(a.json()["method"], a.json()["target"]) for a in answers] == [
        ("GET", "/a"),
        ("POST", "/b"),
        ("GET", "/c"),
    ]
    assert answers[1].json()["body"] == "beta"


async def test_pipelined_requests_change_hands_mid_stream(server: Served) -> None:
    """The lane serves the first; ``/healthz`` and what follows it go to aiohttp, in order."""
    reader, writer = await server.connect()
    writer.write(get("/first") + get("/healthz") + get("/third"))
    first, health, third = [await read_answer(reader) for _ in range(3)]
    assert first.served_by == "wire"
    assert health.json() == {"status": "ok"}
    assert third.served_by == "aiohttp"
    assert third.json()["path"] == "/third"


@pytest.mark.parametrize(
    "cuts",
    [
        pytest.param((), id="one-write"),
        pytest.param((-9,), id="head-then-body"),
        pytest.param((20, -9, -4), id="head-cut-and-body-cut"),
    ],
)
async def test_a_post_body_reaches_the_handler_whole(server: Served, cuts: tuple[int, ...]) -> None:
    """``cuts``: where the request's bytes are split into writes (from its end if negative;
    -9 is where the 9-byte body starts), with a pause between writes."""
    data = request("POST", "/upload?x=1", "Content-Type: text/plain", body=b"some body")
    reader, writer = await server.connect()
    points = [0, *(c % len(data) for c in cuts), len(data)]
    for start, end in itertools.pairwise(points):
        writer.write(data[start:end])
        await writer.drain()
        if end < len(data):
            await asyncio.sleep(0.05)
    answer = await read_answer(reader)
    assert answer.served_by == "wire"
    assert answer.json()["body"] == "some body"
    assert answer.json()["target"] == "/upload?x=1"
    assert server.handler.served == 1
    # And the connection goes on.
    writer.write(get("/after"))
    assert (await read_answer(reader)).json()["target"] == "/after"


# -- 4: what the lane hands to aiohttp ---------------------------------------------------------


async def wire_connection(server: Served) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection the lane has served one request on already."""
    reader, writer = await server.connect()
    writer.write(get("/before"))
    assert (await read_answer(reader)).served_by == "wire"
    return reader, writer


async def still_served_by_aiohttp(
    server: Served, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """After a hand-off the connection stays aiohttp's, and keeps working."""
    writer.write(get("/next"))
    answer = await read_answer(reader)
    assert answer.status == 200
    assert answer.served_by == "aiohttp"
    assert answer.json()["path"] == "/next"


async def test_http_1_0_goes_to_aiohttp(server: Served) -> None:
    reader, writer = await wire_connection(server)
    writer.write(request("GET", "/old", "Connection: keep-alive", version="HTTP/1.0"))
    answer = await read_answer(reader)
    assert answer.served_by == "aiohttp"
    assert answer.json()["version"] == "1.0"
    await still_served_by_aiohttp(server, reader, writer)

    # Without keep-alive, HTTP/1.0 ends the connection.
    reader, writer = await server.connect()
    writer.write(request("GET", "/old", version="HTTP/1.0"))
    answer = await read_answer(reader)
    assert answer.served_by == "aiohttp"
    await expect_eof(reader)
    assert server.total() == 4.0


async def test_a_chunked_request_body_goes_to_aiohttp(server: Served) -> None:
    reader, writer = await wire_connection(server)
    writer.write(
        request("POST", "/upload", "Transfer-Encoding: chunked")
        + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    answer = await read_answer(reader)
    assert answer.served_by == "aiohttp"
    assert answer.json()["body"] == "hello world"
    await still_served_by_aiohttp(server, reader, writer)
    assert server.count(200, "POST") == 1.0
    assert server.total() == 3.0


async def test_expect_100_continue_goes_to_aiohttp(server: Served) -> None:
    reader, writer = await wire_connection(server)
    writer.write(request("POST", "/upload", "Expect: 100-continue", "Content-Length: 5"))
    interim = await read_answer(reader)
    assert interim.status == 100
    writer.write(b"hello")
    answer = await read_answer(reader)
    assert answer.served_by == "aiohttp"
    assert answer.json()["body"] == "hello"
    await still_served_by_aiohttp(server, reader, writer)
    assert server.total() == 3.0


async def test_a_body_over_max_body_goes_to_aiohttp(server: Served) -> None:
    reader, writer = await wire_connection(server)
    big = b"b" * (MAX_BODY + 1)
    writer.write(request("PUT", "/upload", body=big))
    answer = await read_answer(reader)
    assert answer.served_by == "aiohttp"
    assert answer.json()["body"] == big.decode()
    await still_served_by_aiohttp(server, reader, writer)
    assert server.count(200, "PUT") == 1.0


async def test_owned_paths_go_to_the_apps_own_routes(server: Served) -> None:
    reader, writer = await wire_connection(server)
    writer.write(get("/healthz"))
    answer = await read_answer(reader)
    assert answer.status == 200
    assert answer.json() == {"status": "ok"}
    assert answer.served_by is None
    await still_served_by_aiohttp(server, reader, writer)
    assert server.count(200, route="/healthz") == 1.0
    assert server.count(200) == 2.0  # /before on the wire, /next on aiohttp


async def test_requests_go_to_aiohttp_while_a_fault_is_active(server: Served) -> None:
    reader, writer = await wire_connection(server)
    faults = server.app[FAULTS_KEY]
    faults.set(ErrorFault(rate=1.0, status=503))
    writer.write(get("/faulty"))
    answer = await read_answer(reader)
    assert answer.status == 503
    assert answer.json()["code"] == "unavailable"
    assert server.count(503) == 1.0
    assert server.handler.served == 1  # only /before

    faults.clear_all()
    await still_served_by_aiohttp(server, reader, writer)
    # A new connection starts on the lane again.
    reader, writer = await server.connect()
    writer.write(get("/again"))
    assert (await read_answer(reader)).served_by == "wire"
    assert server.count(200) == 3.0


async def test_a_malformed_request_is_answered_400_by_aiohttp(server: Served) -> None:
    reader, writer = await wire_connection(server)
    writer.write(b"GET /a b c HTTP/1.1\r\nHost: wiretest\r\n\r\n")
    answer = await read_answer(reader)
    assert answer.status == 400
    await expect_eof(reader)
    assert server.handler.served == 1


async def test_an_absolute_form_target_is_served_in_origin_form_with_its_host(
    server: Served,
) -> None:
    """RFC 9112 3.2.2: the target's authority is the Host; the path is the target."""
    reader, writer = await wire_connection(server)
    writer.write(get("http://elsewhere/y?q=1"))
    answer = await read_answer(reader)
    assert answer.served_by == "wire"
    assert answer.json()["target"] == "/y?q=1"
    assert server.handler.hosts[-1] == "elsewhere"


async def test_a_fragment_is_not_part_of_the_target(server: Served) -> None:
    reader, writer = await wire_connection(server)
    writer.write(get("/x?a=1#frag"))
    assert (await read_answer(reader)).json()["target"] == "/x?a=1"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET http://u@evil/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET http:/// HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET #frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /" + b"a" * 8190 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 8191 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-F: 1\r\n" * 128 + b"\r\n", 431),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n"
            + b"X-F: %d\r\n" * 0
            + b"X: "
            + b"v" * 8000
            + b"\r\nY: "
            + b"v" * 8000
            + b"\r\nZ: "
            + b"v" * 1000
            + b"\r\n\r\n",
            431,
        ),
    ],
)
async def test_the_front_refuses_what_rfc_9112_and_the_limits_refuse(
    server: Served, head: bytes, status: int
) -> None:
    reader, writer = await server.connect()
    writer.write(head)
    answer = await read_answer(reader)
    assert answer.status == status
    # The app's error shape (RPC JSON here; the edge apps' problem+json: test_differential),
    # with a trace id made for it (no span exists for a request refused unread).
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["code"] in ("invalid_argument", "deadline_exceeded")
    assert len(answer.json()["trace_id"]) == 32
    await expect_eof(reader)
    assert server.handler.served == 0


async def test_a_head_that_never_ends_gets_a_408(serve: Serve) -> None:
    server = await serve(limits=FrontLimits(request_timeout=0.3))
    reader, writer = await server.connect()
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-a: ")
    async with asyncio.timeout(DEADLINE):
        answer = await read_answer(reader)
    assert answer.status == 408
    await expect_eof(reader)


async def test_a_body_trickling_in_is_parsed_once(
    server: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head is parsed once, not again for each piece of the body (the issue measured
    1,502 header callbacks per body byte)."""
    fields_seen = 0
    on_header = WireProtocol.on_header

    def counting(self: WireProtocol, name: bytes, value: bytes) -> None:
        nonlocal fields_seen
        fields_seen += 1
        on_header(self, name, value)

    monkeypatch.setattr(WireProtocol, "on_header", counting)
    reader, writer = await server.connect()
    body = b"b" * 100
    data = request("POST", "/echo", *[f"X-F{i}: {i}" for i in range(100)], body=body)
    head_len = len(data) - len(body)
    writer.write(data[:head_len])
    for i in range(len(body)):
        writer.write(body[i : i + 1])
        await writer.drain()
        await asyncio.sleep(0.001)
    answer = await read_answer(reader)
    assert answer.json()["body"] == body.decode()
    assert fields_seen == 102  # Host, the 100 fields and Content-Length, once each


async def test_a_slow_reader_is_aborted_after_the_write_timeout(serve: Serve) -> None:
    """A client that pipelines requests and never reads its answers: the front stops
    reading, and aborts the connection once its answers stay unread for the write timeout
    (``close`` would wait for the flush forever)."""
    server = await serve(limits=FrontLimits(write_timeout=0.5))
    reader, writer = await server.connect(rcvbuf=4096)
    writer.write(get(f"/sized/{BIG_CHUNK}") * 100)
    await gone(server)
    received = 0
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(DEADLINE):
            while chunk := await reader.read(BIG_CHUNK):
                received += len(chunk)
    assert received < 100 * BIG_CHUNK


async def gone(server: Served) -> None:
    """Every connection of the front has been closed or aborted."""
    async with asyncio.timeout(DEADLINE):
        while True:
            if not server.site.front.connections:
                return
            await asyncio.sleep(0.05)


async def test_connections_over_the_cap_are_aborted(serve: Serve) -> None:
    server = await serve(limits=FrontLimits(max_connections=2))
    kept = [await server.connect() for _ in range(2)]
    for reader, writer in kept:
        writer.write(get("/one"))
        assert (await read_answer(reader)).status == 200
    reader, writer = await server.connect()
    with contextlib.suppress(ConnectionResetError):
        writer.write(get("/three"))
        async with asyncio.timeout(DEADLINE):
            assert await reader.read() == b""


# -- 5, 6, 7: answers ------------------------------------------------------------------------


async def test_connection_close_from_the_client_ends_the_connection(server: Served) -> None:
    reader, writer = await server.connect()
    writer.write(get("/echo", "Connection: close"))
    answer = await read_answer(reader)
    assert answer.served_by == "wire"
    assert answer.headers["Connection"] == "close"
    await expect_eof(reader)


async def test_head_204_and_304_answers_carry_no_body(server: Served) -> None:
    reader, writer = await server.connect()
    writer.write(
        request("HEAD", "/echo/h") + get("/status/204") + get("/status/304") + get("/echo/after")
    )
    head = await read_answer(reader, head=True)
    assert head.status == 200
    assert head.served_by == "wire"
    assert head.headers["Content-Length"] == head.headers["X-Body-Length"]
    assert int(head.headers["Content-Length"]) > 0
    for status in (204, 304):
        answer = await read_answer(reader)
        assert answer.status == status
        assert "Content-Length" not in answer.headers
        assert "Transfer-Encoding" not in answer.headers
    # Had any of them sent a body, this answer's head would not parse.
    after = await read_answer(reader)
    assert after.json() == {
        "method": "GET",
        "target": "/echo/after",
        "body": "",
        "propagate": after.json()["propagate"],
    }


async def test_a_streamed_answer_is_chunked_or_sized(server: Served) -> None:
    reader, writer = await server.connect()
    writer.write(get("/stream") + get("/stream-length") + get("/echo/after"))
    chunked = await read_answer(reader)
    assert chunked.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in chunked.headers
    assert chunked.body == b"".join(STREAM_CHUNKS)
    sized = await read_answer(reader)
    assert "Transfer-Encoding" not in sized.headers
    assert sized.headers["Content-Length"] == str(sum(map(len, STREAM_CHUNKS)))
    assert sized.body == b"".join(STREAM_CHUNKS)
    assert (await read_answer(reader)).json()["target"] == "/echo/after"


async def test_a_large_stream_to_a_slow_reader_arrives_whole(server: Served) -> None:
    reader, writer = await server.connect(rcvbuf=16 * 1024)
    writer.write(get("/big"))
    _version, status, headers = await read_head(reader)
    assert status == 200
    total = BIG_CHUNK * BIG_CHUNKS
    assert headers["Content-Length"] == str(total)
    await asyncio.sleep(0.3)  # not reading: the handler must be held back in send()
    assert server.handler.big_sent < total
    body = bytearray()
    reads = 0
    async with asyncio.timeout(DEADLINE):
        while len(body) < total:
            body += await reader.read(BIG_CHUNK)
            reads += 1
            if reads % 16 == 0:
                await asyncio.sleep(0.005)  # and then reading slowly
    assert body == b"".join(big_chunk(i) for i in range(BIG_CHUNKS))
    assert server.handler.big_sent == total
    writer.write(get("/echo/after"))
    assert (await read_answer(reader)).served_by == "wire"
    assert server.in_flight == 0


# -- 8: telemetry ----------------------------------------------------------------------------


async def test_an_untraced_request_records_no_span_but_propagates_its_decision(
    server: Served, exporter: InMemorySpanExporter
) -> None:
    reader, writer = await server.connect()
    writer.write(get("/echo"))
    propagate = (await read_answer(reader)).json()["propagate"]
    traceparent = propagate["traceparent"]
    match = W3C_TRACEPARENT.fullmatch(traceparent)
    assert match is not None
    assert int(match[1], 16) != 0
    assert int(match[2], 16) != 0
    assert not sampled(traceparent)
    assert exporter.get_finished_spans() == ()


async def test_a_sampled_parent_gets_a_server_span(
    server: Served, exporter: InMemorySpanExporter
) -> None:
    reader, writer = await server.connect()
    writer.write(get("/echo/x?q=1", f"traceparent: {TRACEPARENT}", "User-Agent: wire-test"))
    answer = await read_answer(reader)
    assert answer.status == 200
    (span,) = exporter.get_finished_spans()
    assert span.name == f"GET {ROUTE}"
    assert span.kind is SpanKind.SERVER
    _, trace_id, parent_id, _ = TRACEPARENT.split("-")
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == parent_id
    attributes = dict(span.attributes or {})
    assert attributes["http.route"] == ROUTE
    assert attributes["url.path"] == "/echo/x"
    assert attributes["url.query"] == "q=1"
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.response.status_code"] == 200
    assert attributes["user_agent.original"] == "wire-test"

    traceparent = answer.json()["propagate"]["traceparent"]
    assert traceparent.split("-")[1] == trace_id
    assert traceparent.split("-")[2] == f"{span.context.span_id:016x}"
    assert sampled(traceparent)


async def test_wire_requests_are_counted_and_scraped(server: Served) -> None:
    reader, writer = await server.connect()
    for target in ("/a", "/b"):
        writer.write(get(target))
        await read_answer(reader)
    writer.write(request("POST", "/c", body=b"x"))
    await read_answer(reader)
    assert server.count(200) == 2.0
    assert server.count(200, "POST") == 1.0
    assert (
        server.registry.get_sample_value(
            "http_server_request_duration_seconds_count", {"method": "GET", "route": ROUTE}
        )
        == 2.0
    )
    assert server.in_flight == 0

    # /metrics is the app's own: on the same connection, aiohttp answers it.
    writer.write(get("/metrics"))
    scrape = await read_answer(reader)
    assert scrape.status == 200
    counted = {
        (s.labels["method"], s.labels["route"], s.labels["code"]): s.value
        for family in text_string_to_metric_families(scrape.body.decode())
        for s in family.samples
        if s.name == "http_server_requests_total"
    }
    assert counted[("GET", ROUTE, "200")] == 2.0
    assert counted[("POST", ROUTE, "200")] == 1.0
    in_flight = [
        s.value
        for family in text_string_to_metric_families(scrape.body.decode())
        for s in family.samples
        if s.name == "http_server_requests_in_flight"
    ]
    assert in_flight == [1.0]  # the scrape itself


# -- 9: errors -------------------------------------------------------------------------------


async def test_a_handler_that_raises_gets_the_shared_500(server: Served, logs: LogCapture) -> None:
    reader, writer = await server.connect()
    writer.write(get("/boom"))
    answer = await read_answer(reader)
    assert answer.status == 500
    assert answer.headers["Content-Type"] == "application/json"
    error = answer.json()
    assert error["code"] == "internal"
    assert re.fullmatch(r"[0-9a-f]{32}", error["trace_id"])
    assert server.count(500) == 1.0
    assert server.in_flight == 0
    (line,) = [e for e in logs.entries if e["event"] == "request"]
    assert line["status"] == 500
    assert line["log_level"] == "warning"
    assert line["route"] == ROUTE
    assert line["trace_id"] == error["trace_id"]
    assert [e["event"] for e in logs.entries if e["log_level"] == "error"] == [
        "unhandled_exception"
    ]


async def test_after_a_500_the_connection_goes_on_as_aiohttps_does(server: Served) -> None:
    """The wire's 500 is a whole answer, so the connection stays usable: as on aiohttp's
    path, where the telemetry middleware turns the error into an ordinary answer."""
    reader, writer = await server.connect()
    writer.write(get("/boom"))
    answer = await read_answer(reader)
    assert answer.status == 500
    assert "Connection" not in answer.headers
    writer.write(get("/echo/after"))
    assert (await read_answer(reader)).served_by == "wire"

    reader, writer = await server.connect()
    writer.write(request("GET", "/boom", "Transfer-Encoding: chunked") + b"0\r\n\r\n")
    answer = await read_answer(reader)
    assert answer.status == 500
    assert answer.json()["code"] == "internal"
    await still_served_by_aiohttp(server, reader, writer)


async def test_a_handler_that_gives_no_answer_gets_a_500(server: Served) -> None:
    reader, writer = await server.connect()
    writer.write(get("/silent"))
    answer = await read_answer(reader)
    assert answer.status == 500
    assert answer.json()["code"] == "internal"
    assert server.count(500) == 1.0


async def test_a_handler_that_fails_mid_stream_cuts_the_connection(server: Served) -> None:
    reader, writer = await server.connect()
    writer.write(get("/broken-stream") + get("/echo/never"))
    _version, status, headers = await read_head(reader)
    assert status == 200
    assert headers["Transfer-Encoding"] == "chunked"
    with pytest.raises(asyncio.IncompleteReadError):
        async with asyncio.timeout(DEADLINE):
            await read_chunked(reader)  # "partial", then the connection ends unterminated
    assert server.handler.served == 1
    assert server.count(500) == 1.0


async def test_the_exception_line_carries_the_trace_id_of_the_500(
    server: Served, logs: LogCapture
) -> None:
    reader, writer = await server.connect()
    writer.write(get("/boom"))
    error = (await read_answer(reader)).json()
    (line,) = [e for e in logs.entries if e["event"] == "unhandled_exception"]
    assert line.get("trace_id") == error["trace_id"]


async def test_on_aiohttps_path_the_exception_line_carries_the_trace_id(
    server: Served, logs: LogCapture
) -> None:
    """The same, on aiohttp's path (a target the lane gives to aiohttp)."""
    reader, writer = await server.connect()
    writer.write(get("http://elsewhere/boom"))
    error = (await read_answer(reader)).json()
    (line,) = [e for e in logs.entries if e["event"] == "unhandled_exception"]
    assert line["trace_id"] == error["trace_id"]


# -- 10: the client leaves --------------------------------------------------------------------


async def test_a_client_that_leaves_cancels_its_handler(server: Served) -> None:
    _reader, writer = await server.connect()
    writer.write(get("/wait"))
    async with asyncio.timeout(DEADLINE):
        await server.handler.waiting.wait()
    assert server.in_flight == 1
    writer.close()
    async with asyncio.timeout(DEADLINE):
        await server.handler.cancelled.wait()
    await no_request_in_flight(server)
    assert server.count(499) == 1.0


# -- 11, 12: closing connections ---------------------------------------------------------------


async def test_shutdown_closes_idle_connections_at_once_and_busy_ones_after_their_answer(
    serve: Serve,
) -> None:
    server = await serve(drain=DEADLINE)
    idle_reader, idle_writer = await server.connect()
    idle_writer.write(get("/echo"))
    assert (await read_answer(idle_reader)).status == 200
    busy_reader, busy_writer = await server.connect()
    busy_writer.write(get("/wait"))
    async with asyncio.timeout(DEADLINE):
        await server.handler.waiting.wait()

    stopping = asyncio.create_task(server.site.stop())
    await expect_eof(idle_reader)
    assert not stopping.done()  # the busy connection is still being served
    server.handler.release.set()
    answer = await read_answer(busy_reader)
    assert answer.body == b"released"
    assert answer.headers["Connection"] == "close"
    await expect_eof(busy_reader)
    async with asyncio.timeout(DEADLINE):
        await stopping
    assert not server.handler.cancelled.is_set()
    assert server.in_flight == 0
    with pytest.raises(ConnectionRefusedError):
        await server.connect()


async def test_shutdown_cuts_a_request_still_running_when_the_drain_ends(serve: Serve) -> None:
    server = await serve(drain=0.2)
    reader, writer = await server.connect()
    writer.write(get("/wait"))
    async with asyncio.timeout(DEADLINE):
        await server.handler.waiting.wait()
        await server.site.stop()
    await expect_eof(reader)  # no answer at all
    async with asyncio.timeout(DEADLINE):
        await server.handler.cancelled.wait()
    await no_request_in_flight(server)
    assert server.count(499) == 1.0


async def test_an_idle_connection_closes_after_the_keep_alive_timeout(serve: Serve) -> None:
    server = await serve(keepalive_timeout=0.3)
    reader, writer = await server.connect()
    writer.write(get("/echo"))
    assert (await read_answer(reader)).status == 200
    await expect_eof(reader)  # within DEADLINE: the reaper looks once a second


async def test_the_keep_alive_timeout_spares_a_connection_whose_request_runs(
    serve: Serve,
) -> None:
    server = await serve(keepalive_timeout=0.3)
    reader, writer = await server.connect()
    writer.write(get("/sleep?1.2"))  # the reaper looks at ~1.0 s, while this runs
    answer = await read_answer(reader)
    assert answer.body == b"slept"
    assert "Connection" not in answer.headers
    writer.write(get("/echo/after"))
    assert (await read_answer(reader)).served_by == "wire"


async def test_pipelined_answers_wait_for_a_client_that_does_not_read(server: Served) -> None:
    reader, writer = await server.connect(rcvbuf=16 * 1024)
    n = 200  # 200 x 64 KiB answers: 12.5 MiB, more than the socket buffers hold
    writer.write(get(f"/sized/{BIG_CHUNK}") * n)
    # Wait until the server stops serving (stable for 0.3 s) or has served them all.
    async with asyncio.timeout(DEADLINE):
        last, stable = -1, 0.0
        while server.handler.served < n and stable < 0.3:
            await asyncio.sleep(0.05)
            stable = stable + 0.05 if server.handler.served == last else 0.0
            last = server.handler.served
    assert server.handler.served < n
    for _ in range(n):
        assert len((await read_answer(reader)).body) == BIG_CHUNK


# -- more hand-offs the lane gets wrong --------------------------------------------------------


async def test_an_encoded_owned_path_goes_to_the_apps_own_route(server: Served) -> None:
    reader, writer = await server.connect()
    writer.write(get("/%68ealthz"))
    answer = await read_answer(reader)
    assert answer.json() == {"status": "ok"}


async def test_a_head_with_bare_line_feeds_is_answered_400_at_once(server: Served) -> None:
    reader, writer = await server.connect()
    writer.write(b"GET /x HTTP/1.1\nHost: wiretest\n\n")
    async with asyncio.timeout(1.0):  # aiohttp answers in milliseconds
        _version, status, _headers = await read_head(reader)
    assert status == 400


# -- state that must not outlive a request -----------------------------------------------------


async def test_a_context_variable_set_by_a_handler_does_not_reach_the_next_request(
    server: Served,
) -> None:
    reader, writer = await server.connect()
    writer.write(get("/context"))
    assert (await read_answer(reader)).body == b"unset"
    writer.write(get("/context"))
    assert (await read_answer(reader)).body == b"unset"


async def test_a_connection_handed_to_aiohttp_leaves_no_task_behind(server: Served) -> None:
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(str(context["message"])))
    try:
        reader, writer = await wire_connection(server)  # served, now waiting for more
        writer.write(get("/healthz"))  # arrives while it waits: goes to aiohttp
        assert (await read_answer(reader)).json() == {"status": "ok"}
        writer.close()
        await no_request_in_flight(server)
        await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert reported == []


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/x?a=1", "/x?a=1"),
        ("/x%20y", "/x%20y"),
        ("/x?a=1#frag", "/x?a=1"),
        ("http://elsewhere/y?q=1", "/y?q=1"),
        ("http://elsewhere", "/"),
    ],
)
def test_the_origin_target_of_a_request_on_aiohttps_path(target: str, expected: str) -> None:
    """What a connection handed to aiohttp sends the origin and keys the cache by."""
    assert origin_target(make_mocked_request("GET", target)) == expected
