"""The PoP repeats a keyed POST once when the origin closed the pooled connection it went on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from edge.cdn import CdnConfig, create_app
from mesh.process import ProcessConfig

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application | TestServer], Awaitable[Client]]


class ClosingOrigin:
    """A real origin whose every connection answers its first request and closes, unanswered,
    when a second one arrives on it: the keep-alive race of a server closing an idle
    connection as a request goes out on it."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> ClosingOrigin:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for answered in (False, True):
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.requests.append(head.split(b" ", 2)[1].decode())
                if answered:
                    break  # the second request on this connection: closed, no answer
                body = b'{"ok": true}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def origin() -> AsyncIterator[ClosingOrigin]:
    up = await ClosingOrigin().start()
    yield up
    await up.stop()


def _pop(origin_url: str) -> web.Application:
    process = ProcessConfig(service="cdn-us", instance_id="pop-us")
    config = CdnConfig(process=process, origin_url=origin_url)
    return create_app(config, registry=CollectorRegistry(), tracer_provider=TracerProvider())


@pytest.mark.parametrize(("key", "status", "sent"), [("k-1", 200, 2), (None, 502, 1)])
async def test_keyed_post_is_repeated_once_on_a_closed_keepalive_connection(
    aiohttp_client: ClientFactory, origin: ClosingOrigin, key: str | None, status: int, sent: int
) -> None:
    client = await aiohttp_client(_pop(origin.url))
    async with client.get("/api/warm") as resp:  # pools a keep-alive connection to the origin
        assert resp.status == 200
    headers = {"Idempotency-Key": key} if key else {}
    async with client.post("/api/checkout", json={"cart": 1}, headers=headers) as resp:
        assert resp.status == status
    assert origin.requests.count("/api/checkout") == sent
