"""Mesh test fixtures: a fake clock, small real upstream apps on real sockets, RPC clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from mesh.discovery import StaticDiscovery
from mesh.process import ProcessConfig
from mesh.resilience import ResilienceProfile
from mesh.rpc import HTTP_STATUS, Code, RpcClient
from tests.support import echo

UPSTREAM_SERVICE = "test.v1.TestService"


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Upstream:
    """A fake upstream instance: answers ok, fails with a code, or hangs until released."""

    name: str
    mode: str = "ok"  # "ok" | "fail" | "hang"
    fail_code: Code = Code.UNAVAILABLE
    hits: int = 0
    last_headers: dict[str, str] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    address: str = ""
    _arrivals: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_hits(self, n: int) -> None:
        async with self._arrivals:
            await self._arrivals.wait_for(lambda: self.hits >= n)

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            async with self._arrivals:
                self.hits += 1
                self._arrivals.notify_all()
            self.last_headers = dict(request.headers)
            if self.mode == "fail":
                body = {"code": self.fail_code.value, "message": f"{self.name} is failing"}
                return web.json_response(body, status=HTTP_STATUS[self.fail_code])
            if self.mode == "hang":
                await self.release.wait()
            return web.json_response({"instance": self.name})

        app = web.Application()
        app.router.add_post(f"/{UPSTREAM_SERVICE}/{{method}}", handle)
        return app


StartUpstreams = Callable[[int], Awaitable[list[Upstream]]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def start_upstreams() -> AsyncIterator[StartUpstreams]:
    servers: list[TestServer] = []

    async def start(n: int) -> list[Upstream]:
        result = []
        for _ in range(n):
            up = Upstream(name=f"up{len(servers)}")
            server = TestServer(up.app(), host="127.0.0.1")
            await server.start_server()
            servers.append(server)
            up.address = f"127.0.0.1:{server.port}"
            result.append(up)
        return result

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


class Sleeps:
    """An injectable ``sleep`` that records backoff delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


MakeClient = Callable[..., RpcClient]


@pytest.fixture
def make_client(
    session: aiohttp.ClientSession,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
    clock: FakeClock,
) -> MakeClient:
    def make(
        addresses: Sequence[str],
        profile: ResilienceProfile,
        *,
        policy: str = "round_robin",
        sleep: Sleeps | None = None,
        service: str = "up",
    ) -> RpcClient:
        return RpcClient(
            session,
            StaticDiscovery({service: list(addresses)}),
            service,
            profile=profile,
            policy=policy,
            registry=registry,
            tracer_provider=tracer_provider,
            caller="tests",
            clock=clock,
            sleep=sleep or Sleeps(),
        )

    return make


@pytest.fixture
async def echo_server(tmp_path: Path, tracer_provider: TracerProvider) -> AsyncIterator[TestServer]:
    """The echo app (tests/support/echo.py) in this process, on a real socket."""
    process = ProcessConfig(service="echo", instance_id="echo-1", run_dir=tmp_path)
    app = echo.create_app(process, registry=CollectorRegistry(), tracer_provider=tracer_provider)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
