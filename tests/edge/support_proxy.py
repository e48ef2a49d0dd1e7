"""Real upstreams for the balancer and CDN tests: small aiohttp apps on real loopback sockets.

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
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from edge.cdn.policy import format_http_date

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


def main() -> None:
    """``python -m tests.edge.support_proxy``: the upstream app as its own process."""
    name = os.environ.get("TESTBED_INSTANCE_ID", "upstream")
    port = int(os.environ["TESTBED_PORT"])
    app = create_upstream_app(UpstreamState(name=name))
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
