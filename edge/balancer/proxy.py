"""Forwarding one request to an upstream instance and streaming the answer back.

The hot path of the load balancer, kept lean: the request head is written as bytes from the
raw request fields (``headers.RequestHeadWriter``), sent over a pooled keep-alive connection of
the balancer's own HTTP/1.1 client (``edge.balancer.upstream``: why it is hand-written is said
there), and the answer relayed. Bodies up to ``buffer_bytes`` are read whole (one write each
way, and a request body can be replayed on a retry); larger ones, or of unknown length, are
streamed chunk by chunk in both directions so a large body is never held in memory.

Failure handling:

- connection refused / connect timeout: nothing reached the instance, so any request is retried
  on another instance (the instance is taken out at once); when none is left, 502.
- every pooled connection to the instance busy for ``connect_timeout``: 503, not retried (the
  instance is loaded, not broken; like HAProxy's queue timeout).
- a reused keep-alive connection found closed before one byte of answer came back (the
  upstream closed it while idle): the request goes once more to the same instance on a fresh
  connection, if it is idempotent with a replayable body, or if not a byte of it was written.
  A non-idempotent request (POST, PATCH) that was written is not repeated: the instance might
  have acted on it before closing, so the client gets a 502, as for any reset (the rule of
  Go's ``net/http`` Transport) — unless it carries an ``Idempotency-Key``: the service answers
  a repeat with the first outcome, so it is as safe as a GET (``BALANCER_RETRY_KEYED``). Idle
  connections close after ``idle_timeout``, below the instances' own keep-alive timeout, so
  the race stays rare.
- connection reset, or an answer that is not HTTP, before the answer's headers: retried on
  another instance only for idempotent (or keyed) requests with a replayable body; otherwise
  502. A draining instance closing a connection a checkout is on costs no failed checkout.
- no first byte of answer within ``first_byte_timeout`` of the request being sent (HAProxy's
  ``timeout server``; or the instance was found frozen by a health check meanwhile,
  ``edge.balancer.pool``): a safe request (idempotent method, or keyed as above) is sent once
  more, to another instance; any other gets 504 (never a silent duplicate). The instance
  counts a failure towards its ejection.
- silence for ``read_timeout`` mid-answer (or the exchange beyond ``total_timeout``): 504, not
  retried (it would only multiply the wait).

Every answer and failure feeds the pool's passive ejection (``UpstreamPool.answered``,
``live_failure``, ``connect_failed``).
- a failure after the answer started: the client connection is closed (a truncated body is the
  only honest signal left).

Client disconnects cancel the handler (``handler_cancellation`` on aiohttp's path; the wire
lane does the same), which closes the upstream connection (it cannot be reused mid-answer); a
failed write while streaming does the same.

Two entry points share the forwarding loop (``_forward``): ``handle`` for a request aiohttp's
server read (any body, streamed when large) and ``handle_wire`` for one the wire lane read
(``edge.front.wire``: bodies up to ``buffer_bytes``, answers written as bytes).

``relay_response``, ``stream_rest`` and ``problem`` also serve the CDN PoP, whose origin side
uses aiohttp's client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Protocol, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.streams import StreamReader
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from edge.balancer.config import BalancerConfig
from edge.balancer.headers import (
    RequestHeadWriter,
    ResponseHeaderFilter,
    downstream_response_headers,
)
from edge.balancer.metrics import BalancerMetrics, InstanceMetrics
from edge.balancer.pool import UpstreamPool
from edge.balancer.upstream import (
    ConnectFailed,
    FirstByteTimeout,
    PoolExhausted,
    UpstreamClient,
    UpstreamConnection,
    UpstreamError,
    UpstreamReset,
    UpstreamTimeout,
)
from edge.front.wire import Reply, WireRequest, origin_target, self_made_head
from mesh.discovery import Instance
from observability.errors import PROBLEM_ERRORS
from observability.logs import get_logger

IDEMPOTENCY_KEY = "Idempotency-Key"
"""A request carrying it is deduplicated by the service (IETF draft-ietf-httpapi-idempotency-key):
repeating it is as safe as repeating a GET."""
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# Methods whose requests carry content by definition: an empty one says so (Content-Length: 0).
_CONTENT_METHODS = frozenset({"POST", "PUT", "PATCH"})
_NO_BODY_STATUSES = frozenset({204, 304})
_METHODS = {
    m: m.encode("ascii") for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}
_CHUNK = 64 * 1024
_NO_FIELDS: frozenset[bytes] = frozenset()
_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)
_propagator = TraceContextTextMapPropagator()  # stateless codec, not a singleton resource
_log = get_logger("edge.balancer.proxy")


def problem(status: int, code: str, message: str) -> web.Response:
    """An error answer in the edge's one shape, ``application/problem+json`` (RFC 9457, with
    the trace id; ``observability.errors``)."""
    return PROBLEM_ERRORS.answer(status, message, code=code)


class _Incoming(Protocol):
    """What the proxy reads of a request besides its head lines: aiohttp's or the wire's."""

    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def remote(self) -> str | None: ...


class Proxy:
    """The balancer's request handler: ``handle`` on aiohttp's path, ``handle_wire`` on the
    wire lane's; both forward through ``_forward``."""

    def __init__(
        self,
        config: BalancerConfig,
        pool: UpstreamPool,
        client: UpstreamClient,
        metrics: BalancerMetrics,
    ) -> None:
        self.config = config
        self.pool = pool
        self.client = client
        self.metrics = metrics
        self.via = config.process.instance_id
        self._head = RequestHeadWriter(self.via)
        self.answer_headers = ResponseHeaderFilter(self.via)
        self._hash_header = config.hash_header
        # The hash header is believed from our own hops only (the PoPs, which set it): from
        # anyone else it is dropped, and the key is the peer's address.
        self._trusted = config.trusted_peers
        self._hash_strip = (
            frozenset({config.hash_header.lower().encode("latin-1")})
            if config.hash_header is not None
            else frozenset()
        )
        self._consistent = config.policy == "consistent_hash"
        self._buffer_bytes = config.buffer_bytes
        self._attempts = 1 + config.retries
        self._retry_keyed = config.retry_keyed
        # Only least_request reads the balancer's in-flight counts: skip them otherwise.
        self._in_flight = config.policy == "least_request"
        self._stats: dict[str, InstanceMetrics] = {}

    def _stats_for(self, instance: Instance) -> InstanceMetrics:
        stats = self._stats.get(instance.id)
        if stats is None:
            stats = self._stats[instance.id] = self.metrics.instance(instance.id)
            address, client = instance.address, self.client
            self.metrics.track_active(instance.id, lambda: client.in_use(address))
        return stats

    def _strip(self, request: _Incoming) -> frozenset[bytes]:
        """Fields to leave out of the forwarded request: the hash header from a peer that
        is not one of our own hops."""
        if not self._hash_strip or request.remote in self._trusted:
            return _NO_FIELDS
        return self._hash_strip

    def _hash_key(self, request: _Incoming) -> str | None:
        if self._hash_header is not None and request.remote in self._trusted:
            value = request.headers.get(self._hash_header)
            if value is not None:
                return value
        return request.remote

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Proxy a request aiohttp's server read (bodies of any size and framing)."""
        method = request.method
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)  # W3C traceparent of the current span, if any
        lines = self._head.lines(request, carrier, self._strip(request))
        body: bytes | None = None
        stream: StreamReader | None = None
        length: int | None = None
        if request.body_exists:
            length = request.content_length
            if length is not None and length <= self._buffer_bytes:
                body = await request.read()
            else:
                stream = request.content
        if stream is not None:
            framing = (
                b"Transfer-Encoding: chunked\r\n"
                if length is None
                else b"Content-Length: %d\r\n" % length
            )
        elif body or method in _CONTENT_METHODS:
            framing = b"Content-Length: %d\r\n" % len(body or b"")
        else:
            framing = b""
        target = origin_target(request).encode("utf-8", "surrogateescape")
        out = _ToAiohttp(self, request)
        return await self._forward(
            request, method, target, lines, framing, body, stream, length, out
        )

    async def handle_wire(self, request: WireRequest, reply: Reply) -> None:
        """Proxy a request the wire lane read (``edge.front.wire``): its body, if any, is
        in hand (at most ``buffer_bytes``)."""
        method = request.method
        # The front's trace context; the hash header only from our own hops.
        lines = self._head.lines(request, request.propagate, self._strip(request))
        body = request.body
        if body or method in _CONTENT_METHODS:
            framing = b"Content-Length: %d\r\n" % len(body)
        else:
            framing = b""
        out = _ToWire(self, reply, request.trace_id)
        await self._forward(request, method, request.target, lines, framing, body, None, None, out)

    async def _forward(
        self,
        request: _Incoming,
        method: str,
        target: bytes,
        lines: bytes,
        framing: bytes,
        body: bytes | None,
        stream: StreamReader | None,
        length: int | None,
        out: _Out[_T],
    ) -> _T:
        """Send the request to an instance (another one on a failure that allows it) and
        give the answer, or the failure, to ``out``."""
        method_b = _METHODS.get(method) or method.encode("ascii")
        # May be sent twice: an idempotent method, or a request whose Idempotency-Key makes
        # the service answer a repeat with the first outcome (the checkout's).
        safe = stream is None and (
            method in IDEMPOTENT_METHODS
            or (self._retry_keyed and IDEMPOTENCY_KEY in request.headers)
        )
        no_body = method == "HEAD"
        key = self._hash_key(request) if self._consistent else None
        pool = self.pool
        balancer = pool.balancer
        client = self.client
        loop = client.loop
        tried: list[Instance] = []
        failure: tuple[int, str, str] | None = None
        for _ in range(self._attempts):
            candidates: Sequence[Instance] = pool.candidates()
            if not candidates:
                self.metrics.no_upstream.inc()
                return out.problem(502, "unavailable", f"no instance of {pool.service} is known")
            instance = balancer.pick(candidates, key, exclude=tried)
            if instance in tried:
                break  # every candidate failed this request already
            if tried:
                self.metrics.retries.labels(tried[-1].id).inc()
            tried.append(instance)
            # -- one attempt on `instance` --
            stats = self._stats.get(instance.id) or self._stats_for(instance)
            host = client.hosts.get(instance.address) or client.host(instance.address)
            head = b"".join(
                (method_b, b" ", target, b" HTTP/1.1\r\n", host.host_line, lines, framing, b"\r\n")
            )
            if self._in_flight:
                balancer.begin(instance)
            started = loop.time()
            conn: UpstreamConnection | None = None
            try:
                try:
                    conn = host.take_idle() or await host.acquire()
                    conn.safe = safe
                    try:
                        if stream is None:
                            await conn.send(head, body, no_body)
                        else:
                            await conn.send_streamed(head, stream, length=length, no_body=no_body)
                    except UpstreamReset as exc:
                        if conn.status or not exc.stale or not (exc.unsent or safe):
                            raise
                        # The keep-alive race: the instance closed this idle connection, so it
                        # processed nothing. Once more, on a fresh connection.
                        host.release(conn)
                        conn = None
                        conn = await host.acquire(fresh=True)
                        conn.safe = safe
                        if stream is None:
                            await conn.send(head, body, no_body)
                        else:
                            await conn.send_streamed(head, stream, length=length, no_body=no_body)
                except UpstreamError as exc:
                    if conn is not None and conn.status:
                        # The headers came, then the (small) body broke off: it answered.
                        stats.done(conn.status, conn.headers_at - started)
                        pool.answered(instance, conn.status)
                        return out.problem(*_broken_off(exc))
                    stats.done(exc.code, loop.time() - started)
                    failure, retry = self._failed(instance, exc, safe)
                    if retry:
                        if isinstance(exc, FirstByteTimeout):
                            safe = False  # sent once more at most: a timeout multiplies waits
                        continue
                    return out.problem(*failure)
                status = conn.status
                stats.done(status, conn.headers_at - started)
                pool.answered(instance, status)
                if conn.streaming:
                    return await out.stream(conn, status, no_body)
                return out.whole(conn, status, no_body)
            finally:
                if conn is not None:
                    host.release(conn)  # pooled if the exchange completed cleanly, else closed
                if self._in_flight:
                    balancer.end(instance)
        assert failure is not None
        return out.problem(*failure)

    def _failed(
        self, instance: Instance, exc: UpstreamError, safe: bool
    ) -> tuple[tuple[int, str, str], bool]:
        """The answer (status, code, message) for an attempt that got none, and whether
        another instance may be tried."""
        if isinstance(exc, ConnectFailed):
            self.pool.connect_failed(instance)
            _log.warning("upstream_connect_failed", upstream=instance.id, error=str(exc))
            return (502, "unavailable", f"cannot connect to {instance.id}"), True
        if isinstance(exc, PoolExhausted):
            _log.warning("upstream_pool_full", upstream=instance.id, error=str(exc))
            return (503, "unavailable", f"every connection to {instance.id} is busy"), False
        self.pool.live_failure(instance)
        if isinstance(exc, UpstreamTimeout):
            retry = safe and isinstance(exc, FirstByteTimeout)
            _log.warning("upstream_timeout", upstream=instance.id, error=str(exc), retry=retry)
            return (504, "deadline_exceeded", f"{instance.id} did not answer in time"), retry
        _log.warning("upstream_reset", upstream=instance.id, error=str(exc), code=exc.code)
        return (502, "unavailable", f"{instance.id} closed the connection"), safe


class _Out(Protocol[_T_co]):
    """Where ``Proxy._forward`` delivers: an answer to relay, or a failure to report."""

    def problem(self, status: int, code: str, message: str) -> _T_co: ...

    def whole(self, conn: UpstreamConnection, status: int, no_body: bool) -> _T_co:
        """An answer read whole from the instance (its body, if any, in hand)."""

    async def stream(self, conn: UpstreamConnection, status: int, no_body: bool) -> _T_co:
        """A large or unknown-length answer, relayed chunk by chunk (never whole in memory)."""


class _ToAiohttp:
    """Answers as aiohttp responses."""

    __slots__ = ("_filter", "_request")

    def __init__(self, proxy: Proxy, request: web.Request) -> None:
        self._filter = proxy.answer_headers
        self._request = request

    def problem(self, status: int, code: str, message: str) -> web.StreamResponse:
        return problem(status, code, message)

    def whole(self, conn: UpstreamConnection, status: int, no_body: bool) -> web.StreamResponse:
        headers = self._filter.items(conn.headers)
        reason = conn.reason.decode("latin-1") or None
        if no_body or status in _NO_BODY_STATUSES:
            if no_body and conn.content_length is not None:
                headers.append(("Content-Length", str(conn.content_length)))
            return web.Response(status=status, reason=reason, headers=headers)
        return web.Response(status=status, reason=reason, body=conn.body(), headers=headers)

    async def stream(
        self, conn: UpstreamConnection, status: int, no_body: bool
    ) -> web.StreamResponse:
        if no_body:
            return self.whole(conn, status, no_body)
        request = self._request
        headers = self._filter.items(conn.headers)
        reason = conn.reason.decode("latin-1") or None
        response = web.StreamResponse(status=status, reason=reason, headers=headers)
        if conn.content_length is not None:
            response.content_length = conn.content_length
        await response.prepare(request)
        try:
            async with asyncio.timeout_at(conn.deadline):
                while chunk := await conn.read_chunk():
                    await response.write(chunk)
            await response.write_eof()
        except (UpstreamError, TimeoutError, ConnectionError) as exc:
            # The upstream broke mid-body, or the client left or stalled: stop both sides.
            # The status line is already sent, so closing the client connection is the only
            # signal left.
            conn.close()
            if request.transport is not None:
                request.transport.close()
            _log.warning("stream_aborted", error=type(exc).__name__)
        return response


class _ToWire:
    """Answers written on the wire lane's connection."""

    __slots__ = ("_filter", "_reply", "_trace_id")

    def __init__(self, proxy: Proxy, reply: Reply, trace_id: str | None) -> None:
        self._filter = proxy.answer_headers
        self._reply = reply
        self._trace_id = trace_id

    def problem(self, status: int, code: str, message: str) -> None:
        content_type, body = PROBLEM_ERRORS.encoded(status, message, code, self._trace_id)
        head = self_made_head(content_type) + b"Cache-Control: no-store\r\n"
        reply = self._reply
        reply.respond(status, HTTPStatus(status).phrase.encode(), head, body)

    def whole(self, conn: UpstreamConnection, status: int, no_body: bool) -> None:
        head = self._filter.lines(conn.headers)
        if no_body or status in _NO_BODY_STATUSES:
            length = conn.content_length if no_body else None
            self._reply.respond(status, conn.reason, head, b"", length=length)
        else:
            self._reply.respond(status, conn.reason, head, conn.body())

    async def stream(self, conn: UpstreamConnection, status: int, no_body: bool) -> None:
        if no_body:
            self.whole(conn, status, no_body)
            return
        reply = self._reply
        reply.start_stream(
            status, conn.reason, self._filter.lines(conn.headers), conn.content_length
        )
        try:
            async with asyncio.timeout_at(conn.deadline):
                while chunk := await conn.read_chunk():
                    await reply.send(chunk)
            reply.finish()
        except (UpstreamError, TimeoutError, ConnectionError) as exc:
            # As for aiohttp: the status line is out, closing both sides is the only signal.
            conn.close()
            reply.abort()
            _log.warning("stream_aborted", error=type(exc).__name__)


async def relay_response(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    *,
    via: str,
    buffer_bytes: int,
    extra_headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Send an upstream answer to the client: whole when small, streamed chunk by chunk when
    large or of unknown length (never held whole in memory)."""
    headers = downstream_response_headers(upstream.headers, via=via)
    if extra_headers:
        headers.update(extra_headers)
    length = upstream.content_length
    if request.method == "HEAD" or upstream.status in _NO_BODY_STATUSES:
        if length is not None and request.method == "HEAD":
            headers["Content-Length"] = str(length)
        return web.Response(status=upstream.status, reason=upstream.reason, headers=headers)
    if length is not None and length <= buffer_bytes:
        try:
            data = await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            upstream.close()
            return _failed_before_answer(exc)
        return web.Response(
            status=upstream.status, reason=upstream.reason, body=data, headers=headers
        )
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    response.headers.extend(headers)
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    await stream_rest(request, response, upstream)
    return response


async def stream_rest(
    request: web.Request, response: web.StreamResponse, upstream: aiohttp.ClientResponse
) -> None:
    """Copy the rest of ``upstream``'s body to the prepared ``response``, then finish it."""
    try:
        async for chunk in upstream.content.iter_chunked(_CHUNK):
            await response.write(chunk)
        await response.write_eof()
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        # Upstream broke mid-body or the client left: stop both sides. The status line is
        # already sent, so closing the client connection is the only signal left.
        upstream.close()
        if request.transport is not None:
            request.transport.close()
        _log.warning("stream_aborted", error=type(exc).__name__)


def _broken_off(exc: UpstreamError) -> tuple[int, str, str]:
    if isinstance(exc, UpstreamTimeout):
        return 504, "deadline_exceeded", "upstream did not finish its answer in time"
    return 502, "unavailable", "upstream broke off its answer"


def _failed_before_answer(exc: BaseException) -> web.Response:
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return problem(504, "deadline_exceeded", "upstream did not finish its answer in time")
    return problem(502, "unavailable", "upstream broke off its answer")
