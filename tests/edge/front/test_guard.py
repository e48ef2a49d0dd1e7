"""aiohttp's side of the front (``edge.front.guard``), over loopback sockets in this process.

An edge app without a wire lane (as the gateway is) and a service app are served as
``observability.app.run`` serves them (``_listening``); the tests talk raw HTTP/1.1, so a
request aiohttp's parser refuses, a head or a body that stops, are the test's own bytes. The
limits are short; the bounds on how long a cut takes are a loaded machine's (``DEADLINE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from edge.front.guard import FRONT_LIMITS_KEY, WAITED_BODY
from edge.front.wire import FrontLimits
from mesh.process import ProcessConfig
from observability.app import _listening, create_base_app
from observability.errors import PROBLEM_ERRORS, RPC_ERRORS
from tests.edge.front.test_wire import DEADLINE, Answer, expect_eof, read_answer
from tests.support.processes import free_port

LIMITS = FrontLimits(request_timeout=0.5, keepalive_timeout=5.0)
TRACE_ID = re.compile(r"[0-9a-f]{32}")
BIG = 1 << 20


@dataclass
class Calls:
    """What the app's handler saw: requests started, and the bodies it read whole."""

    started: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)


@dataclass
class Served:
    port: int
    calls: Calls
    server: web.Server

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(DEADLINE):
            return await asyncio.open_connection("127.0.0.1", self.port)


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(process: ProcessConfig) -> AsyncIterator[Serve]:
    """Serve an app (an edge app with ``LIMITS`` unless ``edge=False``) as ``run`` does."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(*, edge: bool = True, limits: FrontLimits = LIMITS) -> Served:
            app = create_base_app(
                process,
                registry=CollectorRegistry(),
                tracer_provider=TracerProvider(),
                error_shape=PROBLEM_ERRORS if edge else RPC_ERRORS,
            )
            if edge:
                app[FRONT_LIMITS_KEY] = limits
            calls = Calls()

            async def echo(request: web.Request) -> web.Response:
                calls.started.append(request.path)
                body = await request.read()  # as the gateway reads: content, whole
                calls.bodies.append(body)
                if request.path == "/big":
                    return web.Response(body=b"b" * BIG)
                return web.Response(body=b"%d" % len(body))

            app.router.add_route("*", "/{tail:.*}", echo)
            port = free_port()
            runner = await stack.enter_async_context(_listening(app, "127.0.0.1", port, 1.0))
            assert runner.server is not None
            return Served(port, calls, runner.server)

        yield start


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE * 2):
        while True:
            if condition():
                return
            await asyncio.sleep(0.05)


def assert_problem(answer: Answer, status: int) -> None:
    assert answer.status == status
    assert answer.headers["Content-Type"] == "application/problem+json"
    document = answer.json()
    assert document["status"] == status
    assert TRACE_ID.fullmatch(document["trace_id"]), document


@pytest.mark.parametrize(
    "head",
    [
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-a: 1\r\n 2\r\n\r\n",  # obs-fold
        b"GET /x HTTP/1.1\nHost: a\n\n",  # bare LF
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-a: a\x00b\r\n\r\n",  # NUL
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # TLS
    ],
)
async def test_what_aiohttps_parser_refuses_is_answered_as_problem_json(
    serve: Serve, head: bytes
) -> None:
    server = await serve()
    reader, writer = await server.connect()
    writer.write(head)
    assert_problem(await read_answer(reader), 400)
    await expect_eof(reader)
    assert server.calls.started == []


async def test_a_service_gets_the_same_in_its_rpc_shape(serve: Serve) -> None:
    server = await serve(edge=False)
    reader, writer = await server.connect()
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nX-a: 1\r\n 2\r\n\r\n")
    answer = await read_answer(reader)
    assert answer.status == 400
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["code"] == "invalid_argument"
    assert TRACE_ID.fullmatch(answer.json()["trace_id"])


async def test_an_error_raised_outside_the_middleware_is_problem_json(serve: Serve) -> None:
    """The router's ``Expect`` handler raises its 417 before any middleware runs."""
    server = await serve()
    reader, writer = await server.connect()
    writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nb")
    assert_problem(await read_answer(reader), 417)
    assert server.calls.started == []


async def test_a_head_that_stops_gets_a_408_and_the_connection_closes(serve: Serve) -> None:
    server = await serve()
    reader, writer = await server.connect()
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nX-a: ")
    assert_problem(await read_answer(reader), 408)
    await expect_eof(reader)


async def test_a_service_keeps_aiohttps_wait_for_a_head(serve: Serve) -> None:
    """No limits, no head timer: a service behind the edge is not cut at the edge's limit."""
    server = await serve(edge=False)
    reader, writer = await server.connect()
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nX-a: ")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(LIMITS.request_timeout * 4):
            await reader.read(1)
    writer.write(b"1\r\n\r\n")
    assert (await read_answer(reader)).status == 200


async def test_a_small_body_that_stops_is_cut_before_the_handler_runs(serve: Serve) -> None:
    server = await serve()
    reader, writer = await server.connect()
    writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")
    assert_problem(await read_answer(reader), 408)
    await expect_eof(reader)
    assert server.calls.started == []  # never ran, so it called nothing upstream


@pytest.mark.parametrize(
    "head",
    [
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nbbbb",
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\nbbbb" % (WAITED_BODY + 1),
    ],
    ids=["chunked", "large"],
)
async def test_a_streamed_body_that_stops_cancels_the_handler(serve: Serve, head: bytes) -> None:
    server = await serve()
    reader, writer = await server.connect()
    writer.write(head)
    assert_problem(await read_answer(reader), 408)
    await expect_eof(reader)
    assert server.calls.started == ["/x"]
    assert server.calls.bodies == []  # it never had the body whole


async def test_a_body_in_time_is_served_and_the_connection_kept(serve: Serve) -> None:
    server = await serve()
    reader, writer = await server.connect()
    for _ in range(2):
        writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabcde")
        await asyncio.sleep(LIMITS.request_timeout / 5)
        writer.write(b"fghij")
        answer = await read_answer(reader)
        assert (answer.status, answer.body) == (200, b"10")
    writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await asyncio.sleep(LIMITS.request_timeout / 5)
    writer.write(b"0\r\n\r\n")
    assert (await read_answer(reader)).body == b"3"
    assert server.calls.bodies == [b"abcdefghij", b"abcdefghij", b"abc"]


async def test_a_client_that_does_not_read_its_answers_is_aborted(serve: Serve) -> None:
    """aiohttp would wait for the flush for ever; the front's write timeout cuts it."""
    server = await serve(limits=dataclasses.replace(LIMITS, write_timeout=0.5))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    try:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n" * 20)  # 20 MB, never read
        await eventually(lambda: bool(server.calls.started))
        await eventually(lambda: not server.server.connections)
    finally:
        sock.close()
    assert len(server.calls.started) < 20  # cut while it still had answers to write


async def test_a_head_that_stops_on_a_kept_alive_connection_gets_a_408(serve: Serve) -> None:
    """The second head is timed from its own first byte (the first head's timer is over)."""
    server = await serve()
    reader, writer = await server.connect()
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n")
    await asyncio.sleep(LIMITS.request_timeout / 5)
    writer.write(b"\r\n")
    assert (await read_answer(reader)).status == 200
    writer.write(b"GET /y HTTP/1.1\r\nHost: a\r\nX-a: ")
    assert_problem(await read_answer(reader), 408)
    await expect_eof(reader)
    assert server.calls.started == ["/x"]
