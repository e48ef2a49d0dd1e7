"""Forwarding one request to an upstream instance and streaming the answer back.

The hot path of the load balancer, kept lean: one shared ``ClientSession`` (keep-alive pool),
no per-request allocations beyond the headers, bodies up to ``buffer_bytes`` read whole (one
write each way), larger ones streamed chunk by chunk in both directions so a large body is
never held in memory.

Failure handling:

- connection refused / connect timeout: nothing reached the instance, so any request is retried
  on another instance (the instance is taken out at once); when none is left, 502.
- connection reset before the answer: retried only for idempotent methods with a replayable
  body; otherwise 502.
- no answer within ``read_timeout``: 504, not retried (it would only multiply the wait).
- a failure after the answer started: the client connection is closed (a truncated body is the
  only honest signal left).

Client disconnects cancel the handler (``handler_cancellation``), which closes the upstream
connection; a failed write while streaming does the same.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import aiohttp
from aiohttp import web
from aiohttp.streams import StreamReader
from multidict import CIMultiDict
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from edge.balancer.config import BalancerConfig
from edge.balancer.headers import downstream_response_headers, upstream_request_headers
from edge.balancer.metrics import BalancerMetrics
from edge.balancer.pool import UpstreamPool
from mesh.discovery import Instance
from observability.errors import error_body
from observability.logs import get_logger

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_NO_BODY_STATUSES = frozenset({204, 304})
_CHUNK = 64 * 1024
_propagator = TraceContextTextMapPropagator()  # stateless codec, not a singleton resource
_log = get_logger("edge.balancer.proxy")


def problem(status: int, code: str, message: str, **extra: object) -> web.Response:
    """An error answer in the shared shape, as ``application/problem+json`` (RFC 9457)."""
    body = error_body(code, message, **extra)
    body.update({"type": "about:blank", "title": message, "status": status})
    return web.json_response(body, status=status, content_type="application/problem+json")


class _Retryable(Exception):
    """The attempt failed in a way that is safe to repeat on another instance."""

    def __init__(self, answer: web.Response) -> None:
        super().__init__(answer.status)
        self.answer = answer


class Proxy:
    """The balancer's request handler."""

    def __init__(
        self,
        config: BalancerConfig,
        pool: UpstreamPool,
        session: aiohttp.ClientSession,
        metrics: BalancerMetrics,
    ) -> None:
        self.config = config
        self.pool = pool
        self.session = session
        self.metrics = metrics
        self.via = config.process.instance_id
        self._hash_header = config.hash_header
        self._consistent = config.policy == "consistent_hash"

    def _hash_key(self, request: web.Request) -> str | None:
        if not self._consistent:
            return None
        if self._hash_header is not None:
            value = request.headers.get(self._hash_header)
            if value is not None:
                return value
        return request.remote

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        headers = upstream_request_headers(request, via=self.via)
        _propagator.inject(headers)
        body: bytes | StreamReader | None = None
        replayable = True
        if request.body_exists:
            length = request.content_length
            if length is not None and length <= self.config.buffer_bytes:
                body = await request.read()
            else:
                body = request.content
                replayable = False
        safe_to_repeat = replayable and method in IDEMPOTENT_METHODS
        key = self._hash_key(request)
        balancer = self.pool.balancer
        tried: list[Instance] = []
        answer: web.Response | None = None
        for _ in range(1 + self.config.retries):
            candidates: Sequence[Instance] = self.pool.candidates()
            if not candidates:
                self.metrics.no_upstream.inc()
                return problem(502, "unavailable", f"no instance of {self.pool.service} is known")
            instance = balancer.pick(candidates, key, exclude=tried)
            if instance in tried:
                break  # every candidate failed this request already
            if tried:
                self.metrics.retries.labels(tried[-1].id).inc()
            tried.append(instance)
            try:
                return await self._attempt(request, instance, method, headers, body, safe_to_repeat)
            except _Retryable as exc:
                answer = exc.answer
        assert answer is not None
        return answer

    async def _attempt(
        self,
        request: web.Request,
        instance: Instance,
        method: str,
        headers: CIMultiDict[str],
        body: bytes | StreamReader | None,
        safe_to_repeat: bool,
    ) -> web.StreamResponse:
        balancer = self.pool.balancer
        active = self.metrics.active_for(instance.id)
        balancer.begin(instance)
        active.inc()
        started = time.perf_counter()
        code = "error"
        try:
            try:
                upstream = await self.session.request(
                    method,
                    instance.base_url + request.raw_path,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                code = "connect_error"
                self.pool.connect_failed(instance)
                _log.warning("upstream_connect_failed", upstream=instance.id, error=str(exc))
                raise _Retryable(
                    problem(502, "unavailable", f"cannot connect to {instance.id}")
                ) from None
            except (aiohttp.ServerTimeoutError, TimeoutError):
                code = "timeout"
                balancer.record_failure(instance)
                _log.warning("upstream_timeout", upstream=instance.id)
                return problem(504, "deadline_exceeded", f"{instance.id} did not answer in time")
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                code = "reset"
                balancer.record_failure(instance)
                _log.warning("upstream_reset", upstream=instance.id, error=str(exc))
                answer = problem(502, "unavailable", f"{instance.id} closed the connection")
                if safe_to_repeat:
                    raise _Retryable(answer) from None
                return answer
            code = str(upstream.status)
            self.metrics.request_done(instance.id, code, time.perf_counter() - started)
            if upstream.status >= 500:
                balancer.record_failure(instance)
            else:
                balancer.record_success(instance)
            try:
                return await relay_response(
                    request, upstream, via=self.via, buffer_bytes=self.config.buffer_bytes
                )
            finally:
                upstream.release()
        finally:
            if code in ("connect_error", "timeout", "reset"):
                self.metrics.request_done(instance.id, code, time.perf_counter() - started)
            balancer.end(instance)
            active.dec()


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


def _failed_before_answer(exc: BaseException) -> web.Response:
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return problem(504, "deadline_exceeded", "upstream did not finish its answer in time")
    return problem(502, "unavailable", "upstream broke off its answer")
