"""The balancer's HTTP/1.1 client: bounded keep-alive connection pools to the instances.

Why hand-written rather than aiohttp's ``ClientSession``: the balancer forwards every request
it receives, so its client's cost per request is most of the balancer's own. Measured on this
testbed's 2-core machine (uvloop, 16 requests in flight to one bare aiohttp backend process,
512 B answers, CPU of the calling process, syscalls included): ``ClientSession.request`` +
``ClientResponse.read`` cost ~66 us per request (URL and header objects, cookie and redirect
machinery, a payload writer, a ``StreamReader`` and timers per answer), this client ~16 us,
which saturates that backend (31k req/s against aiohttp's 15k). In ``edge.bench``'s
``lb-core`` set-up the balancer went from ~160 us to ~60 us of CPU per proxied request. It is
one asyncio ``Protocol`` per connection, the request head written as bytes in one call, the
answer parsed by ``httptools`` (llhttp, the parser of Node.js and uvicorn) into a list of raw
fields, and the waiting handler woken once: when a small answer is complete, or when a large
one's headers are in. The proxy needs nothing of the rest of what ``ClientSession`` does.

What it does, per instance (``HostPool``, keyed by ``host:port``):

- Keep-alive reuse, most recently used connection first; at most ``per_host`` connections per
  instance and ``total`` overall (an idle connection of another instance is closed to make room);
  a request that finds every slot busy waits up to ``connect_timeout`` for one, then gets
  ``PoolExhausted`` (like HAProxy's queue timeout). Idle connections are closed after
  ``idle_timeout`` (keep it below the upstream's own keep-alive timeout: aiohttp's is 75 s).
- A connection is reused only if the answer was complete, the upstream did not ask to close
  (``Connection: close``, HTTP/1.0), the request body was sent whole, and the connection was not
  closed meanwhile (an idle connection whose ``connection_lost`` ran is dropped from the pool).
  An answer to ``HEAD`` also ends its connection: httptools cannot be told that such an answer
  has no body despite its ``Content-Length``, so the connection's framing cannot be trusted.
- Framing of answers: ``Content-Length``, chunked, or delimited by the connection's close;
  interim 1xx answers are skipped; 204, 304 and answers to ``HEAD`` have no body. An answer
  whose length is known and at most ``buffer_bytes`` is collected whole (one wake-up); any
  other is streamed: ``read_chunk()`` hands over what arrived, and reading from the upstream is
  paused while more than ``_HIGH_WATER`` bytes wait for a slow client.
- Request bodies: bytes are sent with the head in one write; a ``StreamReader`` (the client's
  body, larger than ``buffer_bytes`` or of unknown length) is copied chunk by chunk with the
  client's ``Content-Length``, or chunked when the client sent none, waiting whenever the
  upstream's socket buffer is full.
- Deadlines: ``connect_timeout`` to connect (``ConnectFailed``); ``first_byte_timeout`` from
  the request sent whole until the first byte of the answer (``FirstByteTimeout``: HAProxy's
  ``timeout server`` before the answer starts); ``read_timeout`` for any other silence of the
  upstream while it owes bytes (between body bytes; a pause the balancer imposed does not
  count) and ``total_timeout`` for the whole exchange (``UpstreamTimeout``), checked by one
  ticker per client over the exchanges in flight (every eighth of the first-byte timeout or
  quarter of the others, at most every second) rather than by a timer per exchange.
- For the pool's health checks: ``stalled(address, since)`` says whether requests to an
  instance wait for their answer while not one byte came from it since ``since`` (it froze),
  and ``abort_waiting`` fails the safe ones (``UpstreamConnection.safe``, set by the proxy)
  with ``FirstByteTimeout`` so the proxy repeats them elsewhere at once.
- ``UpstreamReset`` when the connection closes or breaks before the answer is complete;
  ``.stale`` says it was a reused connection and not one byte of answer arrived (the keep-alive
  race: the upstream closed it while idle, so it processed nothing). ``BadResponse`` when the
  bytes are not HTTP.

The caller (``edge.balancer.proxy``) decides what each failure means for the client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import cast

from aiohttp.streams import StreamReader
from httptools import HttpParserError, HttpResponseParser

_HIGH_WATER = 256 * 1024  # streamed answer bytes held for a slow client before pausing reads
_NO_BODY_STATUSES = frozenset({204, 304})


class UpstreamError(Exception):
    """An exchange with an instance failed; ``code`` is the metrics label for it."""

    code = "error"


class ConnectFailed(UpstreamError):
    """No connection could be made (refused, unreachable, timed out): nothing was sent."""

    code = "connect_error"


class PoolExhausted(UpstreamError):
    """Every connection slot to the instance stayed busy for ``connect_timeout``: nothing sent."""

    code = "pool_full"


class UpstreamReset(UpstreamError):
    """The connection closed or broke before the answer was complete (the connection's
    ``status`` is still 0 if its headers had not come either).

    ``stale``: a reused connection, and not one byte of answer arrived (the keep-alive race:
    the upstream closed it while it was idle). ``unsent``: not even the request was written.
    """

    code = "reset"

    def __init__(self, message: str, *, stale: bool = False, unsent: bool = False) -> None:
        super().__init__(message)
        self.stale = stale or unsent
        self.unsent = unsent


class BadResponse(UpstreamReset):
    """The upstream's bytes are not a valid HTTP/1.x answer."""

    code = "bad_response"


class UpstreamTimeout(UpstreamError):
    """The upstream was silent for ``read_timeout``, or the exchange exceeded ``total_timeout``."""

    code = "timeout"


class FirstByteTimeout(UpstreamTimeout):
    """Not one byte of answer came within ``first_byte_timeout`` of the request being sent,
    or the instance was found frozen meanwhile (``UpstreamClient.abort_waiting``)."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an instance, carrying one exchange at a time.

    When an exchange's waiter is done, the answer is in ``status``, ``reason``, ``headers``
    (raw byte pairs) and ``content_length``; ``streaming`` tells whether the body follows
    through ``read_chunk()`` or is complete in ``body()``.

    The parser's callbacks only record what they see; ``data_received`` decides once per read
    what it means (complete? streamed?), so an answer that arrives in one read, as small answers
    do, costs no per-field work beyond keeping the field.
    """

    def __init__(self, pool: HostPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.closed = False  # connection_lost ran
        self.exchanges = 0
        self.idle_since = 0.0
        self.active = False  # an exchange is under way: request sent or being sent
        self.waiter: asyncio.Future[None] | None = None
        self.status = 0  # the final answer's status, 0 until its headers are complete
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_at = 0.0
        self.keep_alive = False
        self.streaming = False
        self.done = False  # the answer is complete
        self.error: UpstreamError | None = None
        self.body_sent = True
        self.safe = False  # the request may be sent again elsewhere (set by the proxy)
        self._holds_slot = True  # counted in the pool's limits until released once
        self._deadline = 0.0
        self._activity = 0.0
        self._seen_bytes = False
        self._interim = False
        self._no_body = False
        self._ignore_rest = False
        self._parts: list[bytes] = []
        self._buffered = 0
        self._framed = False
        self._length: int | None = None
        self._chunked = False
        self._reading_paused = False
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)  # TCP_NODELAY is set by the loop

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._lost(self)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if not self.active or self.done or self.error is not None:
            return
        if self.status and self.streaming and not self._chunked and self._length is None:
            self._complete()  # a close-delimited body ends here
        elif self.status:
            self._fail(UpstreamReset("the upstream closed the connection mid-answer"))
        else:
            stale = self.exchanges > 1 and not self._seen_bytes
            self._fail(
                UpstreamReset("the upstream closed the connection before answering", stale=stale)
            )

    def data_received(self, data: bytes) -> None:
        if not self.active or self._ignore_rest:
            if not self._ignore_rest:
                self.close()  # bytes nobody asked for: this connection's framing is lost
            return
        self._seen_bytes = True
        self._activity = self.pool.last_received = self.loop.time()
        try:
            self.parser.feed_data(data)
        except HttpParserError as exc:
            if not self.done:
                self._fail(BadResponse(f"invalid HTTP answer: {exc}"))
            self.keep_alive = False
            self.close()
        if self.done:
            self.pool.client._watching.discard(self)
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif not self.status or self.error is not None:
            pass  # the headers are not complete yet
        elif self.streaming:
            self._streamed(len(data))
        else:
            length = self.content_length
            if length is None or length > self.pool.client.buffer_bytes:
                self.streaming = True  # large or of unknown length: relay as it comes
                self._streamed(len(data))

    def _streamed(self, size: int) -> None:
        self._buffered += size
        if self._buffered >= _HIGH_WATER and not self._reading_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self._reading_paused = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._activity = self.loop.time()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks: record only ---------------------------------------------------

    def on_status(self, status: bytes) -> None:
        if self.done:
            raise BadResponse("the upstream sent bytes after its answer")
        self.reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                raise BadResponse("the upstream switched protocols unasked")
            self._interim = True  # 100 Continue, 103 Early Hints: the real answer follows
            self.headers = []
            return
        self.status = status
        self.headers_at = self._activity
        self.keep_alive = self.parser.should_keep_alive()
        if self._no_body:
            # HEAD: no body follows whatever the fields say; see the module docstring.
            self._ignore_rest = True
            self.keep_alive = False
            self.done = True

    def on_body(self, body: bytes) -> None:
        self._parts.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        else:
            self.done = True

    # -- the exchange ----------------------------------------------------------------------

    @property
    def content_length(self) -> int | None:
        """The answer's Content-Length field, if it has one."""
        if not self._framed:
            self._framed = True
            for name, value in self.headers:
                size = len(name)
                if size == 14 and name.lower() == b"content-length":
                    self._length = int(value)
                elif size == 17 and name.lower() == b"transfer-encoding":
                    self._chunked = b"chunked" in value.lower()
        return self._length

    def _begin(self, no_body: bool) -> asyncio.Future[None]:
        self.active = True
        self.exchanges += 1
        self.status = 0
        self.headers = []
        self.streaming = self.done = self._seen_bytes = self._framed = False
        self.error = None
        self._length = None
        self._no_body = no_body
        self._parts = []
        self._buffered = 0
        self.waiter = waiter = self.loop.create_future()
        client = self.pool.client
        now = self._activity = self.loop.time()
        self._deadline = now + client.total_timeout
        client._watching.add(self)
        if client._ticker is None:
            client._start_ticker()
        return waiter

    def send(self, head: bytes, body: bytes | None, no_body: bool) -> asyncio.Future[None]:
        """Send a whole request. The future is done when the answer can be relayed: complete,
        or its headers in for a streamed one. ``no_body``: the answer has none (HEAD)."""
        waiter = self._begin(no_body)
        self.body_sent = True
        transport = self.transport
        if transport is None or transport.is_closing():
            self._fail(UpstreamReset("the connection closed before sending", unsent=True))
        elif body:
            transport.writelines((head, body))
        else:
            transport.write(head)
        return waiter

    def send_streamed(
        self, head: bytes, body: StreamReader, *, length: int | None, no_body: bool
    ) -> asyncio.Future[None]:
        """``send`` for a body copied from ``body`` as it arrives: ``length`` bytes, else
        chunked. The copy runs in a task of its own, so the exchange's deadlines hold even
        while the client is slow to send."""
        waiter = self._begin(no_body)
        transport = self.transport
        if transport is None or transport.is_closing():
            self._fail(UpstreamReset("the connection closed before sending", unsent=True))
            return waiter
        self.body_sent = False
        transport.write(head)
        self._writer = asyncio.ensure_future(self._copy_body(transport, body, length is None))
        return waiter

    async def _copy_body(
        self, transport: asyncio.Transport, body: StreamReader, chunked: bool
    ) -> None:
        try:
            while True:
                chunk = await body.readany()
                if self.error is not None or self.closed:
                    return
                if not chunk:
                    break
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                self._activity = self.loop.time()
                if self._writing_paused:
                    self._drain = self.loop.create_future()
                    try:
                        await self._drain
                    finally:
                        self._drain = None
            if chunked:
                transport.write(b"0\r\n\r\n")
            self.body_sent = True
        except Exception as exc:  # the client's body broke off (it left, or bad framing)
            self._fail(UpstreamReset(f"the request body broke off: {type(exc).__name__}"))
            self.close()
        finally:
            self._writer = None

    def body(self) -> bytes:
        """The whole body of a complete, non-streamed answer."""
        parts = self._parts
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_chunk(self) -> bytes:
        """The next part of a streamed body (b"" at its end); raises the exchange's error."""
        while True:
            parts = self._parts
            if parts:
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                self._parts = []
                self._buffered = 0
                if self._reading_paused and not self.closed:
                    assert self.transport is not None
                    self._reading_paused = False
                    self._activity = self.loop.time()
                    self.transport.resume_reading()
                return data
            if self.error is not None:
                raise self.error
            if self.done:
                return b""
            self.waiter = waiter = self.loop.create_future()
            await waiter

    @property
    def deadline(self) -> float:
        """When the exchange's ``total_timeout`` ends (event loop time)."""
        return self._deadline

    def close(self) -> None:
        """Close the connection (it will not be reused); an unfinished exchange fails."""
        unfinished = self.active and not self.done
        if unfinished and self.error is None:
            self._fail(UpstreamReset("the exchange was abandoned"))
        if self._writer is not None:
            self._writer.cancel()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if unfinished:
                transport.abort()  # mid-exchange: no point flushing the rest of the request
            else:
                transport.close()

    def _release_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self.pool._slot_freed()

    def _complete(self) -> None:
        self.done = True
        self.pool.client._watching.discard(self)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is not None or self.done:
            return
        self.error = error
        self.pool.client._watching.discard(self)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _check_deadlines(self, now: float, read_timeout: float, first_byte: float) -> None:
        """The client's ticker: fail the exchange if a deadline passed."""
        if now >= self._deadline:
            self._fail(UpstreamTimeout("the exchange took longer than the total timeout"))
        elif not self._seen_bytes and self.body_sent and now - self._activity >= first_byte:
            self._fail(FirstByteTimeout(f"no answer within {first_byte:g}s"))
        elif self._reading_paused:
            self._activity = now  # waiting for the balancer's client, not for the upstream
        elif now - self._activity >= read_timeout:
            self._fail(UpstreamTimeout(f"the upstream was silent for {read_timeout:g}s"))
        if self.error is not None:
            self.close()


class HostPool:
    """The connections to one instance (``address`` is ``host:port``)."""

    def __init__(self, client: UpstreamClient, address: str) -> None:
        self.client = client
        self.loop = client.loop
        self.address = address
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]")  # "[::1]:80" -> "::1"
        self._port = int(port)
        try:
            self.host_line = b"Host: %s\r\n" % address.encode("ascii")
        except UnicodeEncodeError:
            self.host_line = b"Host: %s\r\n" % address.encode("idna")
        self.idle: list[UpstreamConnection] = []  # oldest first, reused from the end
        self.count = 0  # connections open or opening
        self.last_received = 0.0  # loop time of the last byte any connection received
        self.waiters: deque[asyncio.Future[None]] = deque()

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection that is still open, if any."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if not conn.closed and transport is not None and not transport.is_closing():
                return conn
            conn.close()
        return None

    async def acquire(self, *, fresh: bool = False) -> UpstreamConnection:
        """A connection for one exchange: an idle one unless ``fresh``, else a new one when a
        slot is free, else the first one freed within ``connect_timeout``."""
        client = self.client
        deadline = self.loop.time() + client.connect_timeout
        while True:
            if not fresh:
                conn = self.take_idle()
                if conn is not None:
                    return conn
            elif self.idle and self.count >= client.per_host:
                self.idle.pop(0).close()  # make room; its slot frees in connection_lost
            if self.count < client.per_host and client._reserve(self):
                return await self._connect(deadline)
            waiter: asyncio.Future[None] = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass on a wake-up this waiter can no longer use
                else:
                    with contextlib.suppress(ValueError):
                        self.waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise PoolExhausted(
                        f"all {self.count} connections to {self.address} stayed busy"
                    ) from None
                raise

    async def _connect(self, deadline: float) -> UpstreamConnection:
        conn = UpstreamConnection(self)
        try:
            async with asyncio.timeout_at(deadline):
                await self.loop.create_connection(lambda: conn, self._host, self._port)
        except (OSError, TimeoutError) as exc:
            conn.close()
            if conn.transport is None:
                conn._release_slot()  # never connected: no connection_lost will come
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise ConnectFailed(f"cannot connect to {self.address}: {reason}") from None
        except BaseException:
            conn.close()
            if conn.transport is None:
                conn._release_slot()
            raise
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Take back a connection after its exchange: pooled if it can carry another (the
        answer complete, no close asked, the request sent whole, still open), else closed."""
        transport = conn.transport
        if (
            conn.done
            and conn.keep_alive
            and conn.body_sent
            and conn.error is None
            and not conn.closed
            and not conn._reading_paused
            and transport is not None
            and not transport.is_closing()
            and not self.client._closed
        ):
            conn.active = False
            conn.waiter = None
            conn._parts = []
            conn.idle_since = conn._activity  # its last read: a moment ago
            self.idle.append(conn)
            if self.client._reaper is None:
                self.client._start_reaper()
            if self.waiters:
                self._wake_one()
        else:
            conn.close()

    def _lost(self, conn: UpstreamConnection) -> None:
        """``conn``'s connection_lost."""
        if not conn.active:
            with contextlib.suppress(ValueError):
                self.idle.remove(conn)
        conn._release_slot()

    def _slot_freed(self) -> None:
        self.count -= 1
        self.client.open -= 1
        if not self._wake_one():
            self.client._wake_other(self)

    def _wake_one(self) -> bool:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def _expire(self, now: float) -> None:
        idle = self.idle
        limit = now - self.client.idle_timeout
        while idle and idle[0].idle_since <= limit:
            idle.pop(0).close()


class UpstreamClient:
    """Connection pools to every instance, with the deadlines of ``BalancerConfig``.

    Build it inside the running event loop; ``close()`` it when done.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float,
        first_byte_timeout: float | None = None,
        idle_timeout: float = 30.0,
        per_host: int = 128,
        total: int = 512,
        buffer_bytes: int = 65_536,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.first_byte_timeout = read_timeout if first_byte_timeout is None else first_byte_timeout
        self.idle_timeout = idle_timeout
        self.per_host = per_host
        self.total = total
        self.buffer_bytes = buffer_bytes
        self.hosts: dict[str, HostPool] = {}
        self.open = 0  # connections open or opening, all instances
        self._reaper: asyncio.TimerHandle | None = None
        self._closed = False
        # Deadlines are checked by one ticker over the exchanges in flight, not by a timer per
        # exchange (uvloop's call_at + cancel cost ~2 us, a tenth of a proxied request).
        self._watching: set[UpstreamConnection] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self.tick = max(
            0.01, min(read_timeout / 4, total_timeout / 4, self.first_byte_timeout / 8, 1.0)
        )

    def host(self, address: str) -> HostPool:
        pool = self.hosts.get(address)
        if pool is None:
            pool = self.hosts[address] = HostPool(self, address)
        return pool

    def _reserve(self, pool: HostPool) -> bool:
        """Count a new connection to ``pool`` if the overall limit allows it; at the limit,
        close the longest idle connection of another instance (its slot frees shortly)."""
        if self._closed:
            raise PoolExhausted("the balancer is shutting down")
        if self.open >= self.total:
            victim = min(
                (p for p in self.hosts.values() if p.idle and p is not pool),
                key=lambda p: p.idle[0].idle_since,
                default=None,
            )
            if victim is not None:
                victim.idle.pop(0).close()
            return False
        pool.count += 1
        self.open += 1
        return True

    def _wake_other(self, freed: HostPool) -> None:
        """A slot freed on ``freed`` with nobody waiting there: a waiter elsewhere may be held
        back by the overall limit."""
        if self.open < self.total:
            for pool in self.hosts.values():
                if pool is not freed and pool.waiters and pool._wake_one():
                    return

    def _start_ticker(self) -> None:
        self._ticker = self.loop.call_later(self.tick, self._on_tick)

    def _on_tick(self) -> None:
        self._ticker = None
        now = self.loop.time()
        read, first_byte = self.read_timeout, self.first_byte_timeout
        for conn in list(self._watching):
            conn._check_deadlines(now, read, first_byte)
        if self._watching:
            self._ticker = self.loop.call_later(self.tick, self._on_tick)

    def _start_reaper(self) -> None:
        if self._reaper is None and not self._closed:
            every = max(0.05, min(self.idle_timeout / 2, 5.0))
            self._reaper = self.loop.call_later(every, self._reap)

    def _reap(self) -> None:
        """Close idle connections past ``idle_timeout``; forget instances with none left."""
        self._reaper = None
        now = self.loop.time()
        any_idle = False
        for address, pool in list(self.hosts.items()):
            pool._expire(now)
            any_idle = any_idle or bool(pool.idle)
            if pool.count == 0 and not pool.waiters:
                del self.hosts[address]
        if any_idle:
            self._start_reaper()

    def stalled(self, address: str, since: float) -> bool:
        """Whether a request to ``address`` sent before ``since`` (loop time) still waits for
        its first byte while not one byte came from ``address`` on any connection since."""
        pool = self.hosts.get(address)
        if pool is None or pool.last_received >= since:
            return False
        return any(
            c.pool is pool and not c._seen_bytes and c.body_sent and c._activity <= since
            for c in self._watching
        )

    def abort_waiting(self, address: str, reason: str) -> int:
        """Fail every safe request to ``address`` still waiting for its first byte (its
        connection closes): the proxy sends them to another instance. How many there were."""
        waiting = [
            c
            for c in self._watching
            if c.pool.address == address and c.safe and not c._seen_bytes and c.body_sent
        ]
        for conn in waiting:
            conn._fail(FirstByteTimeout(reason))
            conn.close()
        return len(waiting)

    def idle_count(self) -> int:
        return sum(len(p.idle) for p in self.hosts.values())

    def in_use(self, address: str) -> int:
        """Connections to ``address`` carrying (or opening for) an exchange."""
        pool = self.hosts.get(address)
        return 0 if pool is None else pool.count - len(pool.idle)

    async def close(self) -> None:
        """Close every idle connection and refuse new ones; connections in use close when
        their exchange ends."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if self._ticker is not None and not self._watching:
            self._ticker.cancel()  # else it runs on while the exchanges left need deadlines
            self._ticker = None
        for pool in self.hosts.values():
            while pool.idle:
                pool.idle.pop().close()
            while pool._wake_one():
                pass
        await asyncio.sleep(0)  # let connection_lost callbacks run
