"""The PoP's request handler: answer from the cache, revalidate, or fetch from the origin.

Flow for a GET/HEAD (other methods and range requests pass straight through):

1. A stored response that may be reused (``policy.reuse``) is answered at once: ``HIT``, or
   ``STALE`` under ``stale-while-revalidate`` while one background refresh runs.
2. Otherwise one request per key goes to the origin (request collapsing): the first becomes
   the leader, the others wait for it and are then answered from the cache. Keys whose last
   answer could not be stored are remembered for a few seconds ("hit-for-pass") so requests
   for them are not serialised behind each other.
3. A stale entry with a validator is revalidated with ``If-None-Match``/``If-Modified-Since``;
   a ``304`` refreshes the stored headers (``REVALIDATED``). If the origin answers 5xx or
   cannot be reached and ``stale-if-error`` allows it, the stale copy is served (``STALE``).
4. Fresh answers are stored when ``policy.is_storable`` says so and they fit the per-object
   limit; larger ones are streamed through untouched (at most that limit is buffered).

Every answer carries ``Age`` and ``X-Cache: HIT|MISS|STALE|REVALIDATED``.

The PoP is the public entry: what it sends to the origin for a client outside
``CDN_TRUSTED_NETWORKS`` carries none of the client's forwarding or trace fields (overwritten,
``edge.balancer.headers``) and, when ``CDN_HASH_HEADER`` is set, no hash header of the
client's: the PoP sets it to the client's address (the balancer hashes on it).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping
from http import HTTPStatus

import aiohttp
from aiohttp import web
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from edge.balancer.headers import downstream_response_headers, upstream_request_headers
from edge.balancer.proxy import IDEMPOTENCY_KEY, problem, relay_response, stream_rest
from edge.cdn.config import CdnConfig
from edge.cdn.metrics import CdnMetrics
from edge.cdn.policy import (
    EMPTY_CACHE_CONTROL,
    NOT_UPDATED_BY_304,
    CacheControl,
    Reuse,
    corrected_initial_age,
    freshness_lifetime,
    is_storable,
    may_serve_stale_on_error,
    not_modified,
    parse_cache_control,
    request_cache_control,
    reuse,
    vary_fields,
)
from edge.cdn.store import CacheStore, Entry
from edge.front.wire import SERVER_LINE, WireAnswer, WireRequest, date_line, origin_target
from observability.logs import get_logger

_UNSAFE = frozenset({"POST", "PUT", "DELETE", "PATCH"})
# Request fields the PoP drops when it fetches for the cache (it asks for the full answer).
_CACHE_FETCH_DROP = (
    "If-None-Match",
    "If-Modified-Since",
    "If-Match",
    "If-Unmodified-Since",
    "If-Range",
    "Range",
)
# Stored answers never keep these: Age and X-Cache are computed per answer.
_NOT_STORED = frozenset({"age", "x-cache"})
_ORIGIN_ERRORS = frozenset({500, 502, 503, 504})
PASS_MEMORY_SECONDS = 5.0
PASS_MEMORY_KEYS = 10_000
_propagator = TraceContextTextMapPropagator()  # stateless codec
_log = get_logger("edge.cdn")


class EdgeCache:
    """Serves requests from a ``CacheStore`` in front of one origin."""

    def __init__(
        self,
        config: CdnConfig,
        store: CacheStore,
        session: aiohttp.ClientSession,
        metrics: CdnMetrics,
    ) -> None:
        self.config = config
        self.store = store
        self.session = session
        self.metrics = metrics
        self.origin = config.origin
        self.via = config.process.instance_id
        self._inflight: dict[str, asyncio.Event] = {}
        self._pass_until: OrderedDict[str, float] = OrderedDict()
        self._background: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop background refreshes (on app cleanup)."""
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- entry point ---------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        headers = request.headers
        if (method != "GET" and method != "HEAD") or "Range" in headers:
            return await self._pass_through(request)
        key = origin_target(request)
        cc_values = headers.getall("Cache-Control", ())
        request_cc = (
            request_cache_control(headers, cc_values)
            if cc_values or "Pragma" in headers
            else EMPTY_CACHE_CONTROL
        )
        entry = self.store.get(key, headers)
        if entry is not None:
            now = time.time()
            age = entry.age(now)
            decision = reuse(
                age=age,
                lifetime=entry.lifetime,
                response_cc=entry.cache_control,
                request_cc=request_cc,
            )
            if decision is Reuse.FRESH:
                return self._from_cache(request, entry, age, "HIT")
            if decision is Reuse.STALE_WHILE_REVALIDATE:
                self._refresh_in_background(request, key, entry)
                return self._from_cache(request, entry, age, "STALE")
        elif request_cc.only_if_cached:
            self.metrics.results["miss"].inc()
            return problem(504, "unavailable", "not in cache and only-if-cached was asked")
        if method == "HEAD" and entry is None:
            return await self._pass_through(request, result="miss")

        leader_busy = self._inflight.get(key)
        if leader_busy is not None and not self._remembered_pass(key):
            # Request collapsing: wait for the fetch already under way, then reuse its answer.
            try:
                async with asyncio.timeout(self.config.origin_timeout):
                    await leader_busy.wait()
            except TimeoutError:
                pass
            fresh = self.store.get(key, headers)
            if fresh is not None:
                age = fresh.age(time.time())
                decision = reuse(
                    age=age,
                    lifetime=fresh.lifetime,
                    response_cc=fresh.cache_control,
                    request_cc=request_cc,
                )
                if decision is not Reuse.REVALIDATE:
                    return self._from_cache(request, fresh, age, "HIT")
                entry = fresh
        return await self._fetch(request, key, entry, request_cc)

    # -- answers from the cache ----------------------------------------------------------

    def _from_cache(
        self, request: web.Request, entry: Entry, age: float, label: str
    ) -> web.Response:
        return cached_answer(self.metrics, request, entry, age, label)

    # -- origin fetches ------------------------------------------------------------------

    def _upstream_headers(
        self, request: web.Request, drop: tuple[str, ...] = ()
    ) -> CIMultiDict[str]:
        """What goes to the origin for ``request``, as trusted as its client is."""
        remote = request.remote
        trusted = remote in self.config.trusted_networks
        headers = upstream_request_headers(request, via=self.via, drop=drop, trusted=trusted)
        hash_header = self.config.hash_header
        if hash_header is not None:
            if not trusted:
                headers.popall(hash_header, None)
            if hash_header not in headers:
                headers[hash_header] = remote or "unknown"
        _propagator.inject(headers)
        return headers

    def _origin_headers(self, request: web.Request, entry: Entry | None) -> CIMultiDict[str]:
        headers = self._upstream_headers(request, _CACHE_FETCH_DROP)
        if entry is not None:
            _add_validators(headers, entry)
        return headers

    async def _fetch(
        self,
        request: web.Request,
        key: str,
        stale: Entry | None,
        request_cc: CacheControl,
    ) -> web.StreamResponse:
        event: asyncio.Event | None = None
        if key not in self._inflight:
            event = self._inflight[key] = asyncio.Event()
        try:
            return await self._fetch_as_leader(request, key, stale, request_cc, event)
        finally:
            if event is not None:
                self._release(key, event)

    def _release(self, key: str, event: asyncio.Event) -> None:
        if self._inflight.get(key) is event:
            del self._inflight[key]
        event.set()

    async def _fetch_as_leader(
        self,
        request: web.Request,
        key: str,
        stale: Entry | None,
        request_cc: CacheControl,
        event: asyncio.Event | None,
    ) -> web.StreamResponse:
        origin_headers = self._origin_headers(request, stale)
        request_time = time.time()
        started = time.perf_counter()
        try:
            upstream = await self.session.get(
                self.origin + key, headers=origin_headers, allow_redirects=False
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            timed_out = isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError) and not (
                isinstance(exc, aiohttp.ConnectionTimeoutError)
            )
            self.metrics.origin("timeout" if timed_out else "error", None)
            _log.warning("origin_unreachable", path=request.path, error=type(exc).__name__)
            if stale is not None and self._stale_on_error(stale, request_cc):
                return self._from_cache(request, stale, stale.age(time.time()), "STALE")
            if timed_out:
                return _tag(problem(504, "deadline_exceeded", "the origin did not answer in time"))
            return _tag(problem(502, "unavailable", "the origin cannot be reached"))
        try:
            response_time = time.time()
            self.metrics.origin(str(upstream.status), time.perf_counter() - started)
            status = upstream.status
            if status == 304 and stale is not None:
                updated = _revalidated(stale, upstream.headers, request_time, response_time)
                self.store.put(key, request.headers, updated)
                return self._from_cache(request, updated, updated.age(time.time()), "REVALIDATED")
            if (
                status in _ORIGIN_ERRORS
                and stale is not None
                and self._stale_on_error(stale, request_cc)
            ):
                _log.info("serving_stale_on_error", path=request.path, status=status)
                return self._from_cache(request, stale, stale.age(time.time()), "STALE")
            return await self._answer_from_origin(
                request, key, upstream, request_cc, request_time, response_time, event
            )
        finally:
            upstream.release()

    def _stale_on_error(self, stale: Entry, request_cc: CacheControl) -> bool:
        return may_serve_stale_on_error(
            age=stale.age(time.time()),
            lifetime=stale.lifetime,
            response_cc=stale.cache_control,
            request_cc=request_cc,
        )

    async def _answer_from_origin(
        self,
        request: web.Request,
        key: str,
        upstream: aiohttp.ClientResponse,
        request_cc: CacheControl,
        request_time: float,
        response_time: float,
        event: asyncio.Event | None,
    ) -> web.StreamResponse:
        response_cc = parse_cache_control(upstream.headers.getall("Cache-Control", ()))
        storable = is_storable(
            method=request.method,
            status=upstream.status,
            request_cc=request_cc,
            request_has_authorization="Authorization" in request.headers,
            response_cc=response_cc,
            response_headers=upstream.headers,
        )
        length = upstream.content_length
        if not storable or (length is not None and not self.store.fits(length)):
            self._remember_pass(key)
            if event is not None:
                self._release(key, event)  # followers need not wait for a body we won't keep
            return await self._relay_miss(request, upstream)
        limit = self.store.max_object_bytes
        chunks: list[bytes] = []
        total = 0
        try:
            total = await _read_into(upstream, chunks, limit)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.metrics.origin("broken_body", None)
            _log.warning("origin_body_failed", path=request.path, error=type(exc).__name__)
            return _tag(problem(502, "unavailable", "the origin broke off its answer"))
        body = b"".join(chunks)
        headers = downstream_response_headers(upstream.headers, via=self.via)
        if total > limit:
            # Unknown length and larger than an object may be: stream the rest through.
            self._remember_pass(key)
            if event is not None:
                self._release(key, event)
            return await self._stream_large(request, upstream, headers, body)
        entry = _make_entry(
            upstream.status, headers, body, response_cc, request_time, response_time
        )
        if not self.store.put(key, request.headers, entry):
            self._remember_pass(key)
        self.metrics.results["miss"].inc()
        self.metrics.from_origin.inc(len(body))
        answer_headers = CIMultiDict(entry.headers)
        answer_headers["Age"] = str(int(entry.age(time.time())))
        answer_headers["X-Cache"] = "MISS"
        rh = request.headers
        if ("If-None-Match" in rh or "If-Modified-Since" in rh) and not_modified(
            rh, answer_headers
        ):
            return web.Response(status=304, headers=answer_headers)
        return web.Response(status=entry.status, body=body, headers=answer_headers)

    async def _stream_large(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        head: bytes,
    ) -> web.StreamResponse:
        self.metrics.results["miss"].inc()
        headers.setdefault("Age", "0")
        headers["X-Cache"] = "MISS"
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(headers)
        await response.prepare(request)
        await response.write(head)
        await stream_rest(request, response, upstream)
        self.metrics.from_origin.inc(len(head))
        return response

    async def _relay_miss(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        self.metrics.results["miss"].inc()
        if upstream.content_length is not None and request.method != "HEAD":
            self.metrics.from_origin.inc(upstream.content_length)
        return await relay_response(
            request,
            upstream,
            via=self.via,
            buffer_bytes=self.config.buffer_bytes,
            extra_headers={"X-Cache": "MISS", "Age": upstream.headers.get("Age", "0")},
        )

    # -- stale-while-revalidate ----------------------------------------------------------

    def _refresh_in_background(self, request: web.Request, key: str, entry: Entry) -> None:
        if key in self._inflight:
            return  # a refresh (or fetch) for this key is already under way
        event = self._inflight[key] = asyncio.Event()
        headers = self._origin_headers(request, entry)
        vary_headers = CIMultiDict(request.headers)
        task = asyncio.create_task(self._refresh(key, entry, headers, vary_headers, event))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(
        self,
        key: str,
        entry: Entry,
        headers: CIMultiDict[str],
        vary_headers: Mapping[str, str],
        event: asyncio.Event,
    ) -> None:
        try:
            request_time = time.time()
            started = time.perf_counter()
            async with self.session.get(
                self.origin + key, headers=headers, allow_redirects=False
            ) as upstream:
                response_time = time.time()
                self.metrics.origin(str(upstream.status), time.perf_counter() - started)
                if upstream.status == 304:
                    updated = _revalidated(entry, upstream.headers, request_time, response_time)
                    self.store.put(key, vary_headers, updated)
                    return
                response_cc = parse_cache_control(upstream.headers.getall("Cache-Control", ()))
                if (
                    not is_storable(
                        method="GET",
                        status=upstream.status,
                        request_cc=EMPTY_CACHE_CONTROL,
                        request_has_authorization="Authorization" in headers,
                        response_cc=response_cc,
                        response_headers=upstream.headers,
                    )
                    or upstream.status in _ORIGIN_ERRORS
                ):
                    return  # keep the stale copy; stale-if-error decides on later requests
                length = upstream.content_length
                if length is not None and not self.store.fits(length):
                    return
                body = await _read_limited(upstream, self.store.max_object_bytes)
                if body is None:
                    return
                stored_headers = downstream_response_headers(upstream.headers, via=self.via)
                new = _make_entry(
                    upstream.status, stored_headers, body, response_cc, request_time, response_time
                )
                self.store.put(key, vary_headers, new)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.metrics.origin("error", None)
            _log.warning("background_refresh_failed", key=key, error=type(exc).__name__)
        finally:
            self._release(key, event)

    # -- hit-for-pass memory -------------------------------------------------------------

    def _remember_pass(self, key: str) -> None:
        self._pass_until[key] = time.monotonic() + PASS_MEMORY_SECONDS
        self._pass_until.move_to_end(key)
        while len(self._pass_until) > PASS_MEMORY_KEYS:
            self._pass_until.popitem(last=False)

    def _remembered_pass(self, key: str) -> bool:
        until = self._pass_until.get(key)
        if until is None:
            return False
        if until < time.monotonic():
            del self._pass_until[key]
            return False
        return True

    # -- everything that is not cached ---------------------------------------------------

    async def _pass_through(self, request: web.Request, result: str = "pass") -> web.StreamResponse:
        method = request.method
        headers = self._upstream_headers(request)
        body: bytes | StreamReader | None = None
        if request.body_exists:
            length = request.content_length
            if length is not None and length <= self.config.buffer_bytes:
                body = await request.read()
            else:
                body = request.content
        started = time.perf_counter()
        try:
            upstream = await self._request_origin(request, method, headers, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            timed_out = isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError) and not (
                isinstance(exc, aiohttp.ConnectionTimeoutError)
            )
            self.metrics.origin("timeout" if timed_out else "error", None)
            self.metrics.results[result].inc()
            if timed_out:
                return _tag(problem(504, "deadline_exceeded", "the origin did not answer in time"))
            return _tag(problem(502, "unavailable", "the origin cannot be reached"))
        try:
            self.metrics.origin(str(upstream.status), time.perf_counter() - started)
            self.metrics.results[result].inc()
            if method in _UNSAFE and upstream.status < 400:
                self.store.invalidate(origin_target(request))  # RFC 9111 section 4.4
            if upstream.content_length is not None and method != "HEAD":
                self.metrics.from_origin.inc(upstream.content_length)
            return await relay_response(
                request,
                upstream,
                via=self.via,
                buffer_bytes=self.config.buffer_bytes,
                extra_headers={"X-Cache": "MISS", "Age": upstream.headers.get("Age", "0")},
            )
        finally:
            upstream.release()

    async def _request_origin(
        self,
        request: web.Request,
        method: str,
        headers: Mapping[str, str],
        body: bytes | StreamReader | None,
    ) -> aiohttp.ClientResponse:
        """Send a pass-through request to the origin.

        aiohttp repeats an idempotent request once when the pooled connection it went on turns
        out closed (RFC 9112 section 9.3.1). A POST or PATCH carrying an ``Idempotency-Key``
        (with a body held in memory) is as safe to repeat, since the service answers a repeat
        with the first outcome, so it gets the same one repeat: the race it covers is the
        origin closing an idle keep-alive connection as the request goes out on it, as a
        balancer handing over its port does (``observability.handoff``).
        """
        url = self.origin + origin_target(request)
        keyed = IDEMPOTENCY_KEY in request.headers and not isinstance(body, StreamReader)
        try:
            return await self.session.request(
                method, url, headers=headers, data=body, allow_redirects=False
            )
        except aiohttp.ClientConnectorError:
            raise  # nothing was sent; the origin is down, a repeat would only wait again
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if not keyed or method not in _UNSAFE:
                raise
            _log.info("origin_closed_retrying", method=method, error=str(exc) or type(exc).__name__)
        return await self.session.request(
            method, url, headers=headers, data=body, allow_redirects=False
        )


async def _read_into(upstream: aiohttp.ClientResponse, chunks: list[bytes], limit: int) -> int:
    """Read the body into ``chunks`` until its end or until more than ``limit`` bytes came."""
    total = 0
    while total <= limit:
        chunk = await upstream.content.readany()
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return total


async def _read_limited(upstream: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body if it is at most ``limit`` bytes, else None."""
    chunks: list[bytes] = []
    if await _read_into(upstream, chunks, limit) > limit:
        return None
    return b"".join(chunks)


def _tag(response: web.Response) -> web.Response:
    response.headers["X-Cache"] = "MISS"
    response.headers["Age"] = "0"
    return response


def _add_validators(headers: CIMultiDict[str], entry: Entry) -> None:
    if entry.etag is not None:
        headers["If-None-Match"] = entry.etag
    if entry.last_modified is not None:
        headers["If-Modified-Since"] = entry.last_modified


def _make_entry(
    status: int,
    headers: CIMultiDict[str],
    body: bytes,
    response_cc: CacheControl,
    request_time: float,
    response_time: float,
) -> Entry:
    drop = _NOT_STORED | response_cc.private_fields
    stored = tuple((k, v) for k, v in headers.items() if k.lower() not in drop)
    view = CIMultiDictProxy(CIMultiDict(stored))
    vary = vary_fields(view)
    return Entry(
        status=status,
        headers=stored,
        body=body,
        cache_control=response_cc,
        lifetime=freshness_lifetime(response_cc, view, status=status),
        initial_age=corrected_initial_age(
            headers, request_time=request_time, response_time=response_time
        ),
        response_time=response_time,
        vary=vary or (),
        etag=view.get("ETag"),
        last_modified=view.get("Last-Modified"),
    )


def _revalidated(
    entry: Entry,
    fresh_headers: CIMultiDictProxy[str],
    request_time: float,
    response_time: float,
) -> Entry:
    """The stored entry with its headers updated from a 304 (RFC 9111 section 3.2)."""
    update = downstream_response_headers(fresh_headers, via="")
    update.popall("Via", None)
    merged: CIMultiDict[str] = CIMultiDict(entry.headers)
    for name in {k.lower() for k in update}:
        if name in NOT_UPDATED_BY_304 or name in _NOT_STORED:
            continue
        merged.popall(name, None)
        for value in update.getall(name):
            merged.add(name.title(), value)
    response_cc = parse_cache_control(merged.getall("Cache-Control", ()))
    age_source = CIMultiDict(merged)
    if "Age" in fresh_headers:
        age_source["Age"] = fresh_headers["Age"]
    return Entry(
        status=entry.status,
        headers=tuple(merged.items()),
        body=entry.body,
        cache_control=response_cc,
        lifetime=freshness_lifetime(response_cc, merged, status=entry.status),
        initial_age=corrected_initial_age(
            age_source, request_time=request_time, response_time=response_time
        ),
        response_time=response_time,
        vary=entry.vary,
        etag=merged.get("ETag"),
        last_modified=merged.get("Last-Modified"),
    )


def cached_answer(
    metrics: CdnMetrics, request: web.Request, entry: Entry, age: float, label: str
) -> web.Response:
    """The stored ``entry`` as the answer (or a 304 to a satisfied conditional request)."""
    metrics.results[label.lower()].inc()
    # Stored headers never hold Age or X-Cache (_NOT_STORED): appended, not replaced. A list
    # rather than a multidict: web.Response builds its own from it, one copy instead of two.
    headers = [*entry.headers, ("Age", str(int(age))), ("X-Cache", label)]
    rh = request.headers
    if ("If-None-Match" in rh or "If-Modified-Since" in rh) and not_modified(
        rh, CIMultiDict(headers)
    ):
        return web.Response(status=304, headers=headers)
    if request.method != "HEAD":
        metrics.from_cache.inc(len(entry.body))
    return web.Response(status=entry.status, body=entry.body, headers=headers)


def _fresh(
    store: CacheStore, target: str, headers: Mapping[str, str]
) -> tuple[Entry, float] | None:
    """The stored response for a plain request of ``target`` and its age, if it is fresh."""
    entry = store.get(target, headers)
    if entry is None:
        return None
    age = entry.age(time.time())
    decision = reuse(
        age=age,
        lifetime=entry.lifetime,
        response_cc=entry.cache_control,
        request_cc=EMPTY_CACHE_CONTROL,
    )
    return (entry, age) if decision is Reuse.FRESH else None


def fresh_hit(store: CacheStore, metrics: CdnMetrics, request: web.Request) -> web.Response | None:
    """The answer to a plain GET/HEAD whose stored response is fresh (``HIT``), or None.

    The PoP's fast answer (``edge.front.fastlane.FastLane``): a request with
    ``Cache-Control``, ``Pragma`` or ``Range`` takes the full path (``EdgeCache.handle``), as
    does anything that is not a fresh hit; a fresh hit is answered exactly as ``handle`` would.
    """
    method = request.method
    if method != "GET" and method != "HEAD":
        return None
    headers = request.headers
    if "Cache-Control" in headers or "Pragma" in headers or "Range" in headers:
        return None
    found = _fresh(store, origin_target(request), headers)
    if found is None:
        return None
    return cached_answer(metrics, request, *found, "HIT")


# Request fields that send a GET down the full path on the wire: cache directives, ranges and
# conditional requests (which aiohttp's path answers, 304 included).
_WIRE_BYPASS = frozenset(
    {b"cache-control", b"pragma", b"range", b"if-none-match", b"if-modified-since"}
)


def wire_hit(store: CacheStore, metrics: CdnMetrics, request: WireRequest) -> WireAnswer | None:
    """A fresh hit for a plain GET as the wire lane sends it (``edge.front.wire``), or None
    (the request then goes to aiohttp, where ``fresh_hit`` or ``EdgeCache.handle`` serve it).

    The same answer ``cached_answer`` gives through aiohttp, as bytes: the stored fields, then
    ``Age`` and ``X-Cache: HIT``, then what aiohttp adds when they are missing
    (``Content-Type: application/octet-stream`` for a body, ``Date``, ``Server``).
    """
    if request.method != "GET":
        return None
    for name, _ in request.raw_headers:
        if name.lower() in _WIRE_BYPASS:
            return None
    found = _fresh(store, request.raw_path, request.headers)
    if found is None:
        return None
    entry, age = found
    status = entry.status
    if status < 200 or status in (204, 304) or status not in _REASONS:
        return None
    lines = [
        b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("utf-8", "surrogateescape"))
        for name, value in entry.headers
    ]
    lines.append(b"Age: %d\r\nX-Cache: HIT\r\n" % int(age))
    present = {name.lower() for name, _ in entry.headers}
    body = entry.body
    if body and "content-type" not in present:
        lines.append(b"Content-Type: application/octet-stream\r\n")
    if "date" not in present:
        lines.append(date_line())
    if "server" not in present:
        lines.append(SERVER_LINE)
    metrics.results["hit"].inc()
    metrics.from_cache.inc(len(body))
    return status, _REASONS[status], b"".join(lines), body


_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
