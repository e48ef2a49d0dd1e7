"""The wire lane: a process's hot path served by an HTTP/1.1 front of its own, below aiohttp.

aiohttp's server side costs a saturated proxy hop about as much as all its own work (a task
loop per connection, a request and a response object with their multidicts, the router and
the middleware chain: ~25 us a request on the testbed's machine). A component whose hot path
is one catch-all route (the load balancer) gives its app a ``WireLane``: ``run`` then listens
with a ``WireFront`` as the protocol factory, and every connection starts on it:

- each request head is parsed by ``httptools`` (llhttp, the parser Node.js uses; strict about
  smuggling: conflicting lengths, bad characters) into a ``WireRequest`` of raw bytes, its body
  read whole, and the lane's handler called with the request and its connection to answer on
  (``Reply``): a whole answer, or a streamed one with flow control;
- the telemetry is what the middleware records for any request: a server span (the sampler
  decides; an unsampled one still propagates the decision), the RED metrics under the lane's
  route, the in-flight count (drain waits for it), the canonical log line; an unhandled error
  becomes the app's 500 (problem+json at the edge), a client that leaves cancels its handler;
- keep-alive and pipelined requests are served in order; at shutdown idle connections close
  at once and busy ones after their answer.

As the public entry it refuses what aiohttp and HAProxy refuse, within ``FrontLimits``
(stated once there): each byte of a head is parsed once, when the head has all come, and a
body once, when it has all come; over-long lines, fields or heads get 414/431; an HTTP/1.1
request without exactly one valid ``Host`` a 400; an absolute-form target is rewritten to
origin-form with its authority as the ``Host`` (RFC 9112 3.2.2), a fragment dropped; a request
not whole in time gets a 408; idle connections close, and ones whose answers stay unread are
aborted (``close`` would wait for the flush); a process takes a bounded number of
connections. Its own refusals are in the app's error shape (problem+json at the edge) with a
trace id made for them (no span exists for a request refused unread) and ``Connection:
close``; ``edge.front.guard`` does the same for the connections aiohttp reads.

Whatever the lane does not serve, it gives to aiohttp, whole: the connection is handed to an
aiohttp ``RequestHandler`` of the app's own server (``transport.set_protocol``) with the bytes
of the current request, and aiohttp serves it and the rest of that connection as it would
have from the start: the app's own routes (``/healthz``, ``/readyz``, ``/metrics``), requests
while a fault is active (the fault middleware applies them), HTTP/1.0, chunked or large
request bodies, ``Expect``, ``Upgrade``, asterisk- and authority-form targets, and anything
the parser rejects (aiohttp answers the 400: CL+TE, duplicate or odd lengths, obs-fold,
bare LF, control bytes). So the lane never answers differently from the app, only
more cheaply.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import time
from collections.abc import Awaitable, Callable
from contextvars import Token
from dataclasses import dataclass
from typing import Final, Protocol, cast
from urllib.parse import unquote

import httptools
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import context as context_api
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from observability.errors import RPC_ERRORS, ErrorShape, code_for_status, status_title
from observability.keys import (
    ERROR_SHAPE_KEY,
    FAULTS_KEY,
    HTTP_METRICS_KEY,
    IN_FLIGHT_KEY,
    TRACER_PROVIDER_KEY,
)
from observability.logs import get_logger
from observability.middleware import (
    CLIENT_CLOSED,
    QUIET_ROUTES,
    STANDARD_METHODS,
    HostAddresses,
    record_request,
    start_attributes,
    untrusted_parent,
)
from observability.sampling import trace_budget, unsampled_root_maker, unsampled_span_maker
from observability.tracing import tracer_name

__all__ = [
    "SERVER_LINE",
    "WIRE_LANE_KEY",
    "FrontLimits",
    "Reply",
    "WireAnswer",
    "WireFront",
    "WireLane",
    "WireRequest",
    "WireSite",
    "date_line",
    "new_trace_id",
    "origin_target",
    "refusal",
    "self_made_head",
]


@dataclass(frozen=True)
class FrontLimits:
    """Everything the front refuses or cuts, in one place: aiohttp's server limits where
    aiohttp has one (3.14: ``RequestHandler``'s ``max_line_size``, ``max_field_size``,
    ``max_headers``), HAProxy's where it has none (a head fits its 16 KB buffer;
    ``timeout http-request``, ``timeout client``, ``maxconn``). The keep-alive timeout is
    aiohttp's former default (75 s; 3.14's is 3,630 s); ``run`` gives it to aiohttp's server
    too, for the connections the front hands over.

    ``max_line``: the request line, in bytes (over it: 414).
    ``max_field``: a field's name or value, in bytes (over it: 431).
    ``max_fields``: fields in one head (over it: 431).
    ``max_head``: the whole head with its blank line (over it: 431).
    ``request_timeout``: from a request's first byte to its last (the head, and a body the
    front reads whole), in seconds; then a 408 and the connection closes.
    ``keepalive_timeout``: idle between requests; then the connection closes (aborted if
    answers it has not taken are still queued).
    ``write_timeout``: how long a client may leave answer bytes unread; then the connection
    is aborted (``transport.abort``: ``close`` would wait for the flush forever).
    ``max_connections``: open client connections of the process (the front's and those it gave
    aiohttp); one more is aborted at once.
    """

    max_line: int = 8190
    max_field: int = 8190
    max_fields: int = 128
    max_head: int = 16 * 1024
    request_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    write_timeout: float = 30.0
    max_connections: int = 4096

    def __post_init__(self) -> None:
        if min(self.max_line, self.max_field, self.max_fields, self.max_connections) < 1:
            raise ValueError("front limits must be positive")
        if min(self.request_timeout, self.keepalive_timeout, self.write_timeout) <= 0:
            raise ValueError("front timeouts must be positive")


HTTP11: Final = (1, 1)
_NO_BODY_STATUSES: Final = frozenset({204, 304})
_SPECIAL: Final = {
    b"content-length": 1,
    b"transfer-encoding": 2,
    b"expect": 2,
    b"upgrade": 2,
    b"host": 3,
    b"traceparent": 4,
    b"tracestate": 5,
    b"user-agent": 6,
}
_propagator: Final = TraceContextTextMapPropagator()
_TRACEPARENT: Final = "00-%032x-%016x-%02x"
_HOST_FIELD: Final = re.compile(rb"\r\nhost:[^\r]*", re.IGNORECASE)
# A Host value: reg-name or IP literal, optional port (RFC 3986 characters; no userinfo).
_HOST_VALUE: Final = re.compile(rb"[A-Za-z0-9._~%!$&'()*+,;=:\[\]-]*")
_log = get_logger("edge.front.wire")


class Reply(Protocol):
    """The connection a lane handler answers on: ``respond`` once, or ``start_stream``, then
    ``send`` each chunk and ``finish``; ``abort`` closes the connection (the only signal left
    once an answer has started)."""

    @property
    def started(self) -> bool: ...

    def respond(
        self, status: int, reason: bytes, head: bytes, body: bytes, *, length: int | None = None
    ) -> None: ...

    def start_stream(self, status: int, reason: bytes, head: bytes, length: int | None) -> None: ...

    async def send(self, chunk: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


WireHandler = Callable[["WireRequest", Reply], Awaitable[None]]
WireAnswer = tuple[int, bytes, bytes, bytes]
"""A whole answer: status, reason, head lines (``Name: value`` lines, no framing), body."""
WireAnswerer = Callable[["WireRequest"], WireAnswer | None]


@dataclass(frozen=True)
class WireLane:
    """How a component's hot path is served on the wire.

    ``route``: the template its requests are counted and named under (the catch-all route's).
    ``handler``: serves every request the lane takes; writes the answer on the ``Reply``
    (``head`` is ``Name: value\\r\\n`` lines without framing; the front adds Content-Length or
    chunked framing and ``Connection: close`` when the connection ends).
    ``answer``: instead of a handler, answers at once, or returns None for a request it does
    not answer, which then goes to aiohttp with its connection (the CDN PoP answers fresh
    cache hits this way).
    ``max_body``: request bodies up to this size are read whole and given to the handler;
    larger ones are served by aiohttp (which streams them).
    ``owned``: paths the app's own routes serve (always served by aiohttp).
    ``trace_trust``: see below (the CDN PoPs, the public entry, set it).
    ``limits``: what the front refuses and when it cuts a connection (``FrontLimits``).
    """

    route: str
    handler: WireHandler | None = None
    max_body: int = 0
    owned: frozenset[str] = QUIET_ROUTES
    answer: WireAnswerer | None = None
    trace_trust: Callable[[str | None], bool] | None = None
    """At a trust boundary: whether a request from this peer address continues the trace it
    carries (else a new trace, the client's context a link, as in the middleware)."""
    limits: FrontLimits = FrontLimits()

    def __post_init__(self) -> None:
        if (self.answer is None) == (self.handler is None):
            raise ValueError("a wire lane has either a handler or an answer")


WIRE_LANE_KEY: Final = web.AppKey("wire_lane", WireLane)


class WireRequest:
    """One request as the wire lane read it: raw bytes, decoded only where asked."""

    __slots__ = (
        "_headers",
        "body",
        "host",
        "keep_alive",
        "method",
        "propagate",
        "raw_headers",
        "remote",
        "target",
        "trace_id",
        "traceparent",
        "tracestate",
        "user_agent",
    )

    version: Final = HTTP11  # the lane serves HTTP/1.1 only
    secure: Final = False  # plain TCP listeners only

    def __init__(
        self,
        method: str,
        target: bytes,
        raw_headers: list[tuple[bytes, bytes]],
        body: bytes,
        remote: str | None,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.raw_headers = raw_headers
        self.body = body
        self.remote = remote
        self.keep_alive = keep_alive
        self.host = ""
        self.traceparent: bytes | None = None
        self.tracestate: bytes | None = None
        self.user_agent: bytes | None = None
        self._headers: CIMultiDictProxy[str] | None = None
        # Set by the front before the handler runs: the W3C trace context fields to send on
        # any call the handler makes, and the trace id (hex) for error answers.
        self.propagate: dict[str, str] = {}
        self.trace_id: str | None = None

    @property
    def raw_path(self) -> str:
        """The target as sent (path and query), as aiohttp's ``raw_path``."""
        return self.target.decode("utf-8", "surrogateescape")

    @property
    def path(self) -> str:
        """The path, percent-decoded, as aiohttp's ``request.path``."""
        return unquote(self.target.partition(b"?")[0].decode("utf-8", "surrogateescape"))

    @property
    def query_string(self) -> str:
        return self.target.partition(b"?")[2].decode("utf-8", "surrogateescape")

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The fields as a multidict (built when first asked: the hot path reads raw bytes)."""
        if self._headers is None:
            fields: CIMultiDict[str] = CIMultiDict()
            for name, value in self.raw_headers:
                fields.add(name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
            self._headers = CIMultiDictProxy(fields)
        return self._headers


class _HandOff(Exception):
    """The current request is for aiohttp: give it the connection."""


class WireProtocol(asyncio.Protocol):
    """One client connection on the wire lane (and its ``Reply``)."""

    def __init__(self, front: WireFront) -> None:
        self._front = front
        self._lane = front.lane
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._buffer = bytearray()
        self._parser = httptools.HttpRequestParser(self)
        # Each request runs in a task of its own (as in aiohttp: its context variables do
        # not leak into the next request); the connection is busy while it runs.
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._answer: WireAnswer | None = None  # a synchronous lane's, for the next request
        self._started = 0.0
        self._reading_paused = False
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        self._progress = 0.0  # when the answers written were last seen taken (or none queued)
        self._refused = False  # a refusal is on its way out; nothing more is read
        # The request being read: how far the buffer was searched for the head's end, its head
        # once parsed (head_end, body length) until the body is in. The reaper times it (no
        # clock read per request): ``_taken`` counts the requests taken off the buffer, and
        # ``_head_since`` is when the reaper first saw the current one waiting (``_seen``).
        self._scanned = 0
        self._taken = 0
        self._seen = -1
        self._head_since = 0.0
        self._pending: tuple[int, int] | None = None
        self._hosts = 0
        self._valid_host = b""  # the last Host value found valid
        # The request being parsed.
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._length = 0
        self._unsupported = False
        self._special: dict[int, bytes] = {}
        self._body: list[bytes] = []
        self._complete = False
        self._keep = False
        self._http11 = False
        self._method = b""
        # The answer being written.
        self._keep_alive = True
        self._head_only = False
        self._status = 0
        self._chunked = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple | list) and peer:
            self._remote = str(peer[0])
        self.idle_since = self._progress = self._front.loop.time()
        self._front.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._front.forget(self)
        if self._task is not None:
            self._task.cancel()  # the client left: its handler stops (and its upstream calls)
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionResetError("client connection lost"))
            self._drained.exception()  # retrieved here; a waiter gets it raised

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._buffer += data
        if self._busy or self._writing_paused:
            # Pipelined requests wait for the answer in progress (or for the client to read
            # the answers it has): the buffer is bounded.
            bound = self._lane.limits.max_head + self._lane.max_body
            if not self._reading_paused and len(self._buffer) > bound:
                assert self._transport is not None
                self._transport.pause_reading()
                self._reading_paused = True
            return
        self._serve_next()

    def _serve_next(self) -> None:
        """Serve the buffered requests in order: the next one's task, or every answer a
        synchronous lane gives at once (until the client stops reading)."""
        front = self._front
        while not self._busy and not self._writing_paused:
            request = self._next_request()
            if request is None:
                return
            answer = self._answer
            if answer is None:
                self._busy = True
                self._task = task = front.loop.create_task(front.serve(request, self))
                task.add_done_callback(self._served)
                return
            self._answer = None
            front.answer(request, self, answer, self._started)
            if not self._keep_alive:
                self.abort()
                return
            self.idle_since = front.loop.time()

    def _served(self, task: asyncio.Task[None]) -> None:
        self._task = None
        self._busy = False
        transport = self._transport
        if transport is None:
            return
        if not self._keep_alive or self._status == 0:
            transport.close()
            return
        self.idle_since = self._front.loop.time()
        if self._reading_paused and not self._writing_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._serve_next()

    @property
    def busy(self) -> bool:
        return self._busy

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._progress = self._front.loop.time()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None
        if not self._busy and self._transport is not None:
            if self._reading_paused:
                self._reading_paused = False
                self._transport.resume_reading()
            self._serve_next()  # pipelined requests held back while the client did not read

    # -- httptools callbacks --------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))
        kind = _SPECIAL.get(name.lower())
        if kind is None:
            return
        if kind == 1:
            self._length = int(value) if value.isdigit() else -1
        elif kind == 2:
            self._unsupported = True
        else:
            if kind == 3:
                self._hosts += 1
            if kind not in self._special:  # the first of each
                self._special[kind] = value

    def on_headers_complete(self) -> None:
        # Read here: llhttp resets its flags once the message is complete.
        parser = self._parser
        self._keep = parser.should_keep_alive()
        self._http11 = parser.get_http_version() == "1.1"
        self._method = parser.get_method()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    # -- reading requests ---------------------------------------------------------------------

    def _next_request(self) -> WireRequest | None:
        """The next buffered request if it is whole and for the lane; None if it is not whole
        yet, refused, or not for the lane (the connection has then gone to aiohttp).

        Each byte is parsed once: the head when its end has come (searched for in the new
        bytes only), then the body when all of it has come."""
        buffer = self._buffer
        if not buffer or self._transport is None or self._refused:
            return None
        limits = self._lane.limits
        try:
            if self._pending is None and not self._read_head(buffer, limits):
                return None
            assert self._pending is not None
            head_end, length = self._pending
            if length:
                if len(buffer) < head_end + length:
                    return None
                self._parser.feed_data(bytes(buffer[head_end : head_end + length]))
            self._pending = None
            if not self._complete:
                raise _HandOff  # e.g. two Content-Length fields
            method = self._method.decode("ascii")
            raw = self._url.partition(b"?")[0]
            path = raw.decode("utf-8", "surrogateescape")
            if b"%" in raw:
                path = unquote(path)  # as aiohttp's router sees it
            if (
                method not in STANDARD_METHODS
                or path in self._lane.owned
                or self._front.faults.any_active
            ):
                raise _HandOff
            keep_alive = self._keep
        except (
            _HandOff,
            httptools.HttpParserError,
            httptools.HttpParserUpgrade,
            UnicodeDecodeError,
            ValueError,
        ):
            self._hand_off()
            return None
        body = b"".join(self._body) if length else b""
        request = WireRequest(method, self._url, self._fields, body, self._remote, keep_alive)
        special = self._special
        if special:
            host = special.get(3)
            if host is not None:
                request.host = host.decode("utf-8", "surrogateescape")
            request.traceparent = special.get(4)
            request.tracestate = special.get(5)
            request.user_agent = special.get(6)
        answerer = self._lane.answer
        if answerer is not None:
            self._started = time.perf_counter()
            try:
                self._answer = answerer(request)
            except Exception as exc:  # aiohttp's path answers instead, and reports its errors
                _log.warning("wire_answer_failed", error=f"{type(exc).__name__}: {exc}")
                self._answer = None
            if self._answer is None:
                self._hand_off()
                return None
        del buffer[: head_end + length]
        self._scanned = 0
        self._taken += 1
        self._keep_alive = keep_alive and not self._front.closing
        self._head_only = method == "HEAD"
        self._status = 0
        self._chunked = False
        return request

    def _read_head(self, buffer: bytearray, limits: FrontLimits) -> bool:
        """Parse the head once it has all come (True); refuse what the limits or RFC 9112
        refuse; a head this lane does not read goes to aiohttp (``_HandOff``)."""
        start = self._scanned
        end = buffer.find(b"\r\n\r\n", start - 3 if start > 3 else 0)
        size = len(buffer)
        if end < 0:
            # Not a head this lane reads (bare LF line ends, TLS or other bytes that are not
            # HTTP): aiohttp answers it (400) without waiting for more.
            if buffer.find(b"\n\n", max(0, start - 1)) >= 0 or not buffer[:1].isalpha():
                raise _HandOff
            if size > limits.max_head:
                self._refuse(431, f"the request head is over {limits.max_head} bytes")
            elif start <= limits.max_line < size and buffer.find(b"\n", 0, limits.max_line) < 0:
                self._refuse(414, f"the request line is over {limits.max_line} bytes")
            self._scanned = size
            return False
        head_end = end + 4
        if head_end > limits.max_head:
            self._refuse(431, f"the request head is over {limits.max_head} bytes")
            return False
        line_end = buffer.find(b"\r\n")
        if line_end > limits.max_line:
            self._refuse(414, f"the request line is over {limits.max_line} bytes")
            return False
        sp1 = buffer.find(b" ", 0, line_end)
        if (
            sp1 > 0
            and (buffer[sp1 + 1] != 0x2F or buffer.find(b"#", sp1, line_end) >= 0)
            and (sp2 := buffer.rfind(b" ", 0, line_end)) > sp1
        ):
            # Not origin-form, or a fragment: rewritten (or refused).
            origin = self._origin_form(bytes(buffer[sp1 + 1 : sp2]))
            if origin is None:
                return False
            target, authority = origin
            line = bytes(buffer[: sp1 + 1]) + target + bytes(buffer[sp2:line_end])
            rest = bytes(buffer[line_end:head_end])
            if authority is not None:
                # RFC 9112 3.2.2: the target's authority is the Host (one Host at most).
                if len(_HOST_FIELD.findall(rest)) > 1:
                    self._refuse(400, "a request has exactly one Host field")
                    return False
                rest = b"\r\nHost: " + authority + _HOST_FIELD.sub(b"", rest)
            buffer[:head_end] = line + rest
            head_end = len(line) + len(rest)
        self._url = b""
        self._fields = []
        self._length = 0
        self._unsupported = False
        self._special = {}
        self._body = []
        self._complete = False
        self._hosts = 0
        self._parser.feed_data(bytes(buffer[:head_end]))
        if head_end > limits.max_field and any(  # only a long head can hold a long field
            len(name) > limits.max_field or len(value) > limits.max_field
            for name, value in self._fields
        ):
            self._refuse(431, f"a field name or value is over {limits.max_field} bytes")
            return False
        if len(self._fields) > limits.max_fields:
            self._refuse(431, f"a request head has at most {limits.max_fields} fields")
            return False
        if self._hosts > 1 or (self._http11 and self._hosts != 1):
            self._refuse(400, "an HTTP/1.1 request has exactly one Host field")
            return False
        host = self._special.get(3)
        if host is not None and host != self._valid_host:  # checked once per connection
            if _HOST_VALUE.fullmatch(host) is None:
                self._refuse(400, "the Host field is not a host name or address")
                return False
            self._valid_host = host
        length = self._length
        if (
            self._unsupported
            or length < 0
            or length > self._lane.max_body
            or not self._http11
            or not self._url.startswith(b"/")
        ):
            raise _HandOff
        self._pending = (head_end, length)
        return True

    def _origin_form(self, target: bytes) -> tuple[bytes, bytes | None] | None:
        """The target without its fragment, in origin-form, and the authority of an
        absolute-form target; None when refused. Other forms (``*``, authority-form) are
        aiohttp's."""
        target = target.partition(b"#")[0]
        authority = None
        scheme, sep, rest = target.partition(b"://")
        if sep and scheme.lower() in (b"http", b"https"):
            cut = len(rest)
            for mark in (b"/", b"?"):
                at = rest.find(mark)
                if 0 <= at < cut:
                    cut = at
            authority, path = rest[:cut], rest[cut:]
            if not authority or b"@" in authority or _HOST_VALUE.fullmatch(authority) is None:
                self._refuse(400, "an absolute-form target needs a host (and no user info)")
                return None
            target = path if path.startswith(b"/") else b"/" + path
        if not target:
            self._refuse(400, "the request target is empty once its fragment is removed")
            return None
        return target, authority

    def _refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` (in the app's error shape) and close: nothing more is read."""
        self._refused = True
        self._pending = None
        self._buffer.clear()
        transport = self._transport
        if transport is None:
            return
        transport.write(refusal(self._front.error_shape, status, detail, new_trace_id()))
        transport.close()

    def check_deadlines(self, now: float, limits: FrontLimits) -> None:
        """Cut what the limits cut (the front's reaper calls this each second): answers left
        unread past the write timeout (abort), a request not whole within the request timeout
        (408), an idle connection past the keep-alive timeout."""
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size() == 0:
            self._progress = now
        elif now - self._progress > limits.write_timeout:
            transport.abort()  # close() would wait for a flush that never comes
            return
        if self._busy or self._writing_paused or self._refused:
            return
        if self._buffer:
            if self._seen != self._taken:  # a request not seen waiting before: its clock starts
                self._seen = self._taken
                self._head_since = now
            elif now - self._head_since > limits.request_timeout:
                self._refuse(408, f"a request must arrive within {limits.request_timeout:g} s")
        elif now - self.idle_since > limits.keepalive_timeout:
            self._keep_alive = False
            if transport.get_write_buffer_size():
                transport.abort()  # answers still unread: close() would wait for them
            else:
                transport.close()

    def _hand_off(self) -> None:
        """Give the connection, with the bytes of the current request, to aiohttp."""
        transport = self._transport
        assert transport is not None
        self._front.forget(self)
        self._transport = None
        handler = self._front.server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        data = bytes(self._buffer)
        self._buffer.clear()
        if data:
            handler.data_received(data)

    def close_when_idle(self) -> None:
        """Shutting down: close now if idle, else after the answer in progress."""
        self._keep_alive = False
        if not self._busy and self._transport is not None:
            self._transport.close()

    # -- Reply --------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._status != 0

    @property
    def status(self) -> int:
        """The answer's status once started, else 0."""
        return self._status

    def _head(self, status: int, reason: bytes, head: bytes, framing: bytes) -> bytes:
        if self._status:
            raise RuntimeError("the answer has started already")
        self._status = status
        connection = b"" if self._keep_alive else b"Connection: close\r\n"
        return b"HTTP/1.1 %d %s\r\n%s%s%s\r\n" % (status, reason, head, framing, connection)

    def respond(
        self, status: int, reason: bytes, head: bytes, body: bytes, *, length: int | None = None
    ) -> None:
        """The whole answer. ``length`` is a HEAD answer's Content-Length (its body is not
        sent); 1xx, 204 and 304 answers carry none."""
        if status in _NO_BODY_STATUSES or status < 200:
            data = self._head(status, reason, head, b"")
        elif self._head_only:
            framing = b"" if length is None else b"Content-Length: %d\r\n" % length
            data = self._head(status, reason, head, framing)
        else:
            data = self._head(status, reason, head, b"Content-Length: %d\r\n" % len(body)) + body
        if self._transport is not None:
            self._transport.write(data)

    def start_stream(self, status: int, reason: bytes, head: bytes, length: int | None) -> None:
        """The answer's head; its body follows by ``send`` (chunked when ``length`` is None)."""
        if self._head_only:
            self.respond(status, reason, head, b"", length=length)
            return
        if length is None:
            self._chunked = True
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            framing = b"Content-Length: %d\r\n" % length
        data = self._head(status, reason, head, framing)
        if self._transport is not None:
            self._transport.write(data)

    async def send(self, chunk: bytes) -> None:
        """One piece of a streamed body; waits while the client reads slower than we send.
        Raises ConnectionResetError once the client has gone."""
        transport = self._transport
        if transport is None:
            raise ConnectionResetError("client connection lost")
        if not chunk or self._head_only:
            return
        if self._chunked:
            transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            transport.write(chunk)
        if self._writing_paused:
            if self._drained is None:
                self._drained = self._front.loop.create_future()
            await self._drained

    def finish(self) -> None:
        if self._chunked and not self._head_only and self._transport is not None:
            self._transport.write(b"0\r\n\r\n")

    def abort(self) -> None:
        self._keep_alive = False
        if self._transport is not None:
            self._transport.close()


SERVER_LINE: Final = b"Server: %s\r\n" % SERVER_SOFTWARE.encode("ascii")
"""The ``Server`` field aiohttp adds to an answer that has none."""


def date_line() -> bytes:
    """The ``Date`` field aiohttp adds to an answer that has none (its clock, cached per
    second)."""
    return b"Date: %s\r\n" % rfc822_formatted_time().encode("ascii")


def self_made_head(content_type: bytes) -> bytes:
    """The head lines of an answer this process makes itself (not relayed), as aiohttp's."""
    return b"Content-Type: %s\r\n%s%s" % (content_type, date_line(), SERVER_LINE)


def new_trace_id() -> str:
    """A trace id (lowercase hex) for an answer no span exists for (a request refused
    before it was read whole)."""
    return f"{random.getrandbits(128):032x}"


def refusal(shape: ErrorShape, status: int, detail: str, trace_id: str) -> bytes:
    """A whole answer refusing a request, in the app's error shape, with ``Connection:
    close`` (the wire front's own refusals and aiohttp's, ``edge.front.guard``)."""
    content_type, body = shape.encoded(status, detail, code_for_status(status), trace_id)
    head = self_made_head(content_type) + b"Cache-Control: no-store\r\n"
    return b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        status,
        status_title(status).encode(),
        head,
        len(body),
        body,
    )


def origin_target(request: web.BaseRequest) -> str:
    """The target as the origin gets it and the cache keys it: origin-form, no fragment.

    aiohttp's ``raw_path`` is the target as sent, an absolute-form one or a fragment included
    (on a connection the wire front handed over; the front itself rewrites them); its
    ``rel_url`` holds the path and query (RFC 9112 3.2.2)."""
    raw = request.raw_path
    if raw.startswith("/") and "#" not in raw:
        return raw
    return request.rel_url.raw_path_qs or "/"


def _internal_error(reply: Reply, trace_id: str | None, shape: ErrorShape) -> None:
    content_type, body = shape.encoded(500, "internal error", "internal", trace_id)
    reply.respond(500, b"Internal Server Error", self_made_head(content_type), body)


class _Refused(asyncio.Protocol):
    """A connection over the process's cap: aborted at once (as a full listen queue would
    refuse it, without a byte read)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()


class WireFront:
    """The protocol factory of a listener with a wire lane, and its connections. Make it in
    the running event loop; ``server`` is the app's own (aiohttp's), for hand-offs."""

    def __init__(self, app: web.Application, server: web.Server, lane: WireLane) -> None:
        self.server = server
        self.lane = lane
        self.loop = asyncio.get_running_loop()
        self.connections: set[WireProtocol] = set()
        self.closing = False
        self.metrics = app[HTTP_METRICS_KEY]
        self.faults = app[FAULTS_KEY]
        self.in_flight = app[IN_FLIGHT_KEY]
        self.error_shape = app.get(ERROR_SHAPE_KEY, RPC_ERRORS)
        provider = app[TRACER_PROVIDER_KEY]
        self.tracer = provider.get_tracer(tracer_name)
        self.unsampled = unsampled_span_maker(provider)
        self._unsampled_root = unsampled_root_maker(provider)
        self._budget = trace_budget(provider.sampler)
        self._addresses = HostAddresses()
        self._names: dict[str, str] = {}
        self._root = Context()
        self._reaper: asyncio.TimerHandle | None = None
        self._none_left = asyncio.Event()

    def __call__(self) -> asyncio.Protocol:
        if self._reaper is None and not self.closing:
            self._reap()
        limit = self.lane.limits.max_connections
        if len(self.connections) + len(self.server.connections) >= limit:
            return _Refused()
        return WireProtocol(self)

    def _reap(self) -> None:
        """Cut the connections past a deadline (``FrontLimits``; checked each second, as
        aiohttp's keep-alive timer is coarse too)."""
        now = self.loop.time()
        limits = self.lane.limits
        for conn in list(self.connections):
            conn.check_deadlines(now, limits)
        self._reaper = None if self.closing else self.loop.call_later(1.0, self._reap)

    def _continues(self, request: WireRequest) -> bool:
        """Whether the request carries a trace context this process continues."""
        if request.traceparent is None:
            return False
        trust = self.lane.trace_trust
        return trust is None or trust(request.remote)

    def _span(self, request: WireRequest, method: str) -> Span:
        parent = self._root
        links: list[Link] | None = None
        if request.traceparent is not None:
            carrier = {"traceparent": request.traceparent.decode("latin-1")}
            if request.tracestate is not None:
                carrier["tracestate"] = request.tracestate.decode("latin-1")
            parent = _propagator.extract(carrier)
            if not self._continues(request):  # an untrusted client's: a link, not a parent
                parent, links = untrusted_parent(parent)
        span = self.unsampled(parent) if self.unsampled is not None else None
        if span is not None:
            return span
        route = self.lane.route
        name = self._names.get(method)
        if name is None:
            name = self._names[method] = f"{method} {route}"
        span = self.tracer.start_span(
            name,
            context=parent,
            links=links,
            kind=SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        )
        if span.is_recording():
            agent = request.user_agent
            span.set_attributes(
                start_attributes(
                    method,
                    route,
                    request.path,
                    "http",
                    self._addresses("http", request.host),
                    request.remote,
                    agent.decode("utf-8", "surrogateescape") if agent is not None else None,
                    request.query_string,
                )
            )
        return span

    async def serve(self, request: WireRequest, reply: WireProtocol) -> None:
        """Serve one request with the lane's handler, recorded as the middleware would."""
        method = request.method
        status = 500
        error_type: str | None = None
        self.in_flight.enter()
        started = time.perf_counter()
        root = None
        if self._unsampled_root is not None and not self._continues(request):
            root = self._unsampled_root()
        span: Span | None = None
        token: Token[Context] | None = None
        if root is not None:
            # The common case at saturation: a new trace the budget has no credit for. Only
            # its ids travel on (so the services downstream do not start traces of their
            # own): no span object, nothing made current.
            traceparent = _TRACEPARENT % root
            request.propagate = {"traceparent": traceparent}
            request.trace_id = traceparent[3:35]
        else:
            span = self._span(request, method)
            token = context_api.attach(set_span_in_context(span))
            carrier: dict[str, str] = {}
            _propagator.inject(carrier)
            request.propagate = carrier
            context = span.get_span_context()
            request.trace_id = f"{context.trace_id:032x}" if context.is_valid else None
        handler = self.lane.handler
        assert handler is not None
        try:
            await handler(request, reply)
            if not reply.started:
                raise RuntimeError("the wire handler gave no answer")
            status = reply.status
            if status >= 500:
                error_type = str(status)
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            error_type = "cancelled"
            raise
        except Exception as exc:
            _log.exception(
                "unhandled_exception",
                path=request.path,
                error_type=type(exc).__name__,
                trace_id=request.trace_id,
            )
            if span is not None:
                span.record_exception(exc)
            error_type = type(exc).__qualname__
            if reply.started:
                reply.abort()  # a truncated answer is the only signal left
            else:
                _internal_error(reply, request.trace_id, self.error_shape)
        finally:
            elapsed = time.perf_counter() - started
            recorded = span
            if recorded is None and status >= 500:  # a failure's line, with its trace's ids
                assert root is not None
                trace_id, span_id, flags = root
                recorded = NonRecordingSpan(
                    SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags)
                )
            self._record(request, recorded, method, status, elapsed, error_type)
            if span is not None:
                if token is not None:
                    context_api.detach(token)
                span.end()
            self.in_flight.leave()

    def answer(
        self, request: WireRequest, reply: WireProtocol, answer: WireAnswer, started: float
    ) -> None:
        """Send a synchronous lane's answer, recorded as the middleware would (no context is
        made current: the answer makes no calls)."""
        method = request.method
        status = answer[0]
        budget = self._budget
        span = None
        traced = self._continues(request) or budget is None or budget.would_sample()
        if traced or status >= 500:  # a span, maybe recorded; a failure's line has its ids
            span = self._span(request, method)
        reply.respond(*answer)
        elapsed = time.perf_counter() - started
        error_type = str(status) if status >= 500 else None
        self._record(request, span, method, status, elapsed, error_type)
        if span is not None:
            span.end()

    def _record(
        self,
        request: WireRequest,
        span: Span | None,
        method: str,
        status: int,
        elapsed: float,
        error_type: str | None,
    ) -> None:
        """As the middleware records a request; an untraced success only in the metrics
        (``span`` None: no span, no line)."""
        if span is None:
            self.metrics.observe(method, self.lane.route, status, elapsed)
        else:
            route = self.lane.route
            record_request(
                self.metrics, request, span, method, route, status, elapsed, None, error_type
            )

    def forget(self, conn: WireProtocol) -> None:
        """``conn`` closed or went to aiohttp."""
        self.connections.discard(conn)
        if not self.connections:
            self._none_left.set()

    async def shutdown(self, drain: float) -> None:
        """Close idle connections now, busy ones after their answer (``drain`` seconds at
        most, then they are closed too)."""
        self.closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if not self.connections:
            return
        self._none_left.clear()
        for conn in list(self.connections):
            conn.close_when_idle()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain):
                await self._none_left.wait()
        for conn in list(self.connections):
            conn.abort()


class WireSite(web.BaseSite):
    """A TCP listener whose connections start on the app's wire lane (``WireFront``)."""

    __slots__ = ("_drain", "_front", "_host", "_port", "_sock")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        lane: WireLane,
        drain: float,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        super().__init__(runner)
        assert runner.server is not None
        self._front = WireFront(runner.app, runner.server, lane)
        self._host = host
        self._port = port
        self._drain = drain
        self._sock = sock  # a listening socket to serve instead (observability.handoff)

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def front(self) -> WireFront:
        return self._front

    async def start(self) -> None:
        await super().start()
        if self._sock is not None:
            self._server = await self._front.loop.create_server(self._front, sock=self._sock)
            return
        self._server = await self._front.loop.create_server(
            self._front, self._host, self._port, backlog=self._backlog
        )

    async def stop(self) -> None:
        await super().stop()  # the listener closes
        with contextlib.suppress(Exception):
            await self._front.shutdown(self._drain)
