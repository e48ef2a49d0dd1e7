"""The front's error shape and deadlines on the connections aiohttp's own server reads.

Requests the wire lane gives to aiohttp (``edge.front.wire``: CL+TE, obs-fold, bare LF,
control bytes, chunked or large bodies, ...) and every request of an edge app without a wire
lane (the gateway) are read by aiohttp's ``RequestHandler``. Left as it is, that handler
answers what its parser refuses with a text/plain ``400 Bad Request``, waits for a partial
head until the keep-alive timeout and for a request body for ever. Here, as the wire lane
does it:

- ``ShapedRequestHandler`` answers aiohttp's own errors (the parser's 400s, the 500 of a
  handler that failed outside the middleware) in the app's ``ErrorShape``, problem+json at
  the edge, with a new trace id (no span exists for a request that could not be read) that
  its log line (``request_refused``) carries too. With the front's limits, a head not
  whole within ``request_timeout`` gets a 408 and the connection closes (aiohttp only has
  its keep-alive timer; not timed: a partial head pipelined behind a whole request in one
  segment, which waits for the keep-alive timeout), and a connection whose answers stay
  unread for ``write_timeout`` is aborted (aiohttp would wait for the client for ever).
- ``install_request_guard``: a request body must be whole within ``request_timeout`` of
  its head. One of known length up to ``WAITED_BODY`` is waited for before the handler
  runs, so the handler never sees a partial body and makes no upstream call; a larger or
  chunked one is streamed as it comes (as HAProxy does without ``option
  http-buffer-request``) and the handler is cancelled at the deadline if it is not whole
  (its upstream connection closes mid-request: the upstream never gets a whole request).
  Either way the client gets a 408 and the connection closes. And an HTTP error raised
  outside the app's middleware (the router's ``Expect`` handler's 417) is answered in the
  app's shape too.
- ``ShapedRunner``: an ``AppRunner`` whose server makes ``ShapedRequestHandler``s
  (``observability.app`` serves every app with one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from edge.front.wire import FrontLimits, new_trace_id, refusal
from observability.errors import ErrorShape, code_for_status, status_title
from observability.logs import get_logger

__all__ = [
    "FRONT_LIMITS_KEY",
    "WAITED_BODY",
    "ShapedRequestHandler",
    "ShapedRunner",
    "ShapedServer",
    "install_request_guard",
]

FRONT_LIMITS_KEY: Final = web.AppKey("front_limits", FrontLimits)
"""The limits of an edge app served without a wire lane (the gateway); one with a lane
uses its lane's."""

WAITED_BODY: Final = 65536
"""Bodies of known length up to this are waited for whole before the handler runs: below
the 128 KiB at which aiohttp's ``StreamReader`` stops reading until the handler reads."""

_EXPECT: Final = "Expect"
_log = get_logger("edge.front.guard")
_Handler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]  # aiohttp's request_handler


def _detail(status: int, message: str | None) -> str:
    if status >= 500:
        return "internal error"
    first = (message or "").strip().splitlines()[:1]
    reason = first[0].rstrip(": ")[:200] if first else status_title(status)
    return f"the request could not be read: {reason}"


def _shaped(shape: ErrorShape, status: int, detail: str, trace_id: str) -> web.Response:
    content_type, body = shape.encoded(status, detail, code_for_status(status), trace_id)
    response = web.Response(
        status=status, body=body, headers={"Content-Type": content_type.decode()}
    )
    response.headers["Cache-Control"] = "no-store"
    response.force_close()
    return response


class ShapedRequestHandler(RequestHandler):
    """aiohttp's connection handler, its own answers in ``shape`` and its heads timed."""

    __slots__ = (
        "_armed",
        "_head_timer",
        "_last_payload",
        "_request_timeout",
        "_shape",
        "_write_timeout",
        "_write_timer",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        shape: ErrorShape,
        limits: FrontLimits | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._shape = shape
        self._request_timeout = None if limits is None else limits.request_timeout
        self._write_timeout = None if limits is None else limits.write_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._armed = 0
        self._last_payload: StreamReader | None = None

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: too late for an answer
            raise ConnectionError("the answer has started: no error answer can follow")
        trace_id = new_trace_id()
        detail = _detail(status, message)
        if status >= 500:
            _log.error(
                "unhandled_exception",
                status=status,
                error_type=type(exc).__name__ if exc is not None else None,
                trace_id=trace_id,
                exc_info=exc,
            )
        else:
            _log.info("request_refused", status=status, detail=detail, trace_id=trace_id)
        return _shaped(self._shape, status, detail, trace_id)

    # -- the head's deadline ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        super().data_received(data)
        if self._request_timeout is None:
            return
        if self._request_count != count:  # a head came whole (its body may follow)
            self._last_payload = self._messages[-1][1] if self._messages else None
            return
        timer = self._head_timer
        if timer is not None:
            if self._armed == count:
                return  # the head being timed goes on arriving
            timer.cancel()  # timing a head that has come since
            self._head_timer = None
        payload = self._last_payload
        if payload is not None and not payload.is_eof():
            return  # body bytes of the request in progress, timed by the body deadline
        # Bytes of a head not whole yet: it has request_timeout to come.
        self._armed = count
        self._head_timer = self._loop.call_later(self._request_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        if self._request_count != self._armed or self.transport is None or self._force_close:
            return  # the head came
        if self._request_in_progress:  # a pipelined head waits behind an answer: not yet
            self._head_timer = self._loop.call_later(1.0, self._head_late)
            return
        assert self._request_timeout is not None
        detail = f"a request must arrive within {self._request_timeout:g} s"
        trace_id = new_trace_id()
        _log.info("request_refused", status=408, detail=detail, trace_id=trace_id)
        self.transport.write(refusal(self._shape, 408, detail, trace_id))
        self.force_close()

    # -- answers left unread ------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timeout is not None and self._write_timer is None:
            self._write_timer = self._loop.call_later(self._write_timeout, self._write_late)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_late(self) -> None:
        self._write_timer = None
        if self.transport is not None:
            _log.info("slow_reader_aborted", write_timeout=self._write_timeout)
            self.transport.abort()  # close() would wait for the flush

    def connection_lost(self, exc: BaseException | None) -> None:
        for timer in (self._head_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._write_timer = None
        self._last_payload = None
        super().connection_lost(exc)


class ShapedServer(web.Server):
    """aiohttp's ``Server`` (the protocol factory) making ``ShapedRequestHandler``s."""

    def __init__(self, plain: web.Server, shape: ErrorShape, limits: FrontLimits | None) -> None:
        # aiohttp keeps the handler's arguments in ``_kwargs`` and builds the handler
        # itself (``Server.__call__``); the same, with a handler of ours.
        super().__init__(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )
        self.shape = shape
        self.limits = limits

    def __call__(self) -> RequestHandler:
        return ShapedRequestHandler(
            self,
            shape=self.shape,
            limits=self.limits,
            loop=self._loop,
            **self._kwargs,
        )


class ShapedRunner(web.AppRunner):
    """An ``AppRunner`` whose server is a ``ShapedServer`` (``limits``: the front's, at the
    edge; None elsewhere: aiohttp's waits)."""

    def __init__(
        self,
        app: web.Application,
        *,
        shape: ErrorShape,
        limits: FrontLimits | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._shape = shape
        self._limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return ShapedServer(plain, self._shape, self._limits)


def install_request_guard(server: web.Server, timeout: float, shape: ErrorShape) -> None:
    """Put the body deadline and the shaping of HTTP errors raised outside the middleware
    (module docstring) in front of ``server``'s request handler."""
    inner: _Handler = server.request_handler

    def body_first(request: BaseRequest) -> Awaitable[web.StreamResponse]:
        # The common case, no body or all of it here and no Expect (whose handler may raise
        # outside the middleware), costs no coroutine of its own.
        if request.content.is_eof() and _EXPECT not in request.headers:
            return inner(request)
        return guarded(request)

    async def guarded(request: BaseRequest) -> web.StreamResponse:
        try:
            content = request.content
            if content.is_eof():
                return await inner(request)
            length = request.content_length
            if length is not None and length <= WAITED_BODY and _EXPECT not in request.headers:
                try:
                    async with asyncio.timeout(timeout):
                        await content.wait_eof()
                except TimeoutError:
                    return await _late(request, shape, timeout)
                return await inner(request)
            return await _watched(request, inner, timeout, shape)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _from_http_error(exc, shape)

    server.request_handler = body_first


def _from_http_error(exc: web.HTTPException, shape: ErrorShape) -> web.StreamResponse:
    """An HTTP error raised outside the app's middleware, in ``shape`` (its headers kept)."""
    trace_id = new_trace_id()
    text = exc.text or ""
    detail = exc.reason if text in ("", f"{exc.status}: {exc.reason}") else text
    _log.info("request_refused", status=exc.status, detail=detail, trace_id=trace_id)
    response = _shaped(shape, exc.status, detail, trace_id)
    for name, value in exc.headers.items():
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    return response


async def _watched(
    request: BaseRequest, inner: _Handler, seconds: float, shape: ErrorShape
) -> web.StreamResponse:
    """``inner`` serving a streamed body, cancelled if the body is not whole in time."""
    task = asyncio.current_task()
    assert task is not None
    late = False

    def check() -> None:
        nonlocal late
        if not request.content.is_eof():
            late = True
            task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, check)
    try:
        response: web.StreamResponse = await inner(request)
    except asyncio.CancelledError:
        if not late or task.uncancel() > 0:  # cancelled for another reason too
            raise
    else:
        if not late:
            return response
    finally:
        timer.cancel()
    if request.writer.output_size > 0:  # an answer had started: cutting it is all that is left
        request.protocol.force_close()
        return web.Response(status=408)  # not sent: the connection is closed
    return await _late(request, shape, seconds)


async def _late(request: BaseRequest, shape: ErrorShape, seconds: float) -> web.StreamResponse:
    """The 408 sent, then the connection closed (nothing more of it is read)."""
    detail = f"a request body must arrive within {seconds:g} s"
    trace_id = new_trace_id()
    _log.info("request_refused", status=408, detail=detail, trace_id=trace_id)
    response = _shaped(shape, 408, detail, trace_id)
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response
