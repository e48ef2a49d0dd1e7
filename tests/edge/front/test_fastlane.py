"""Telemetry under the rate-limited sampler: log lines follow the traces; the fast lane."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry
from structlog.testing import LogCapture

from edge.front.fastlane import FAST_LANE_KEY, FastLane, install_fast_lane
from mesh.process import ProcessConfig
from observability.app import FAULTS_KEY, IN_FLIGHT_KEY, create_base_app
from observability.faults import ErrorFault
from observability.sampling import ParentBasedRateLimiting

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
FAST_BODY = b"from the fast lane"


async def slow_path(request: web.Request) -> web.Response:
    return web.Response(text="from the handler")


def fast_answer(request: web.Request) -> web.Response | None:
    return web.Response(body=FAST_BODY) if request.path.startswith("/fast") else None


def provider_with(sampler: Sampler, exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def no_new_traces(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """The default sampler, out of credit: no new trace is recorded; parents are followed."""
    provider = provider_with(ParentBasedRateLimiting(0), exporter)
    yield provider
    provider.shutdown()


ServerFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def start(
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> ServerFactory:
    """Serve an app as ``observability.app.run`` does: its fast lane in front of it."""

    async def serve(app: web.Application) -> TestClient[web.Request, web.Application]:
        server = TestServer(app)
        await server.start_server()
        assert server.runner is not None
        assert server.runner.server is not None
        install_fast_lane(server.runner.server, app)
        return await aiohttp_client(server)

    return serve


def build(
    process: ProcessConfig, registry: CollectorRegistry, provider: TracerProvider
) -> web.Application:
    app = create_base_app(process, registry=registry, tracer_provider=provider)
    resource = app.router.add_resource("/{tail:.*}")
    resource.add_route("GET", slow_path)
    app[FAST_LANE_KEY] = FastLane(resource.canonical, answer=fast_answer)
    return app


def requests_counted(registry: CollectorRegistry, code: str = "200") -> float:
    value = registry.get_sample_value(
        "http_server_requests_total", {"method": "GET", "route": "/{tail}", "code": code}
    )
    return value or 0.0


async def test_untraced_requests_get_no_canonical_line_but_failures_do(
    start: ServerFactory,
    process: ProcessConfig,
    no_new_traces: TracerProvider,
    exporter: InMemorySpanExporter,
    logs: LogCapture,
) -> None:
    app = create_base_app(process, registry=CollectorRegistry(), tracer_provider=no_new_traces)
    app.router.add_get("/ok", slow_path)

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app.router.add_get("/broken", broken)
    client = await start(app)
    assert (await client.get("/ok")).status == 200
    assert [e for e in logs.entries if e["event"] == "request"] == []
    assert exporter.get_finished_spans() == ()

    assert (await client.get("/broken")).status == 500
    (line,) = [e for e in logs.entries if e["event"] == "request"]
    assert line["status"] == 500
    assert line["level"] == "warning"

    # A traced request (its parent was sampled) has its span and its line.
    assert (await client.get("/ok", headers={"traceparent": TRACEPARENT})).status == 200
    (span,) = exporter.get_finished_spans()
    lines = [e for e in logs.entries if e["event"] == "request" and e["status"] == 200]
    assert [line["span_id"] for line in lines] == [format(span.context.span_id, "016x")]


async def test_the_fast_lane_answers_untraced_requests_and_counts_them(
    start: ServerFactory,
    process: ProcessConfig,
    registry: CollectorRegistry,
    no_new_traces: TracerProvider,
    exporter: InMemorySpanExporter,
    logs: LogCapture,
) -> None:
    client = await start(build(process, registry, no_new_traces))
    for _ in range(3):
        resp = await client.get("/fast/a")
        assert resp.status == 200
        assert await resp.read() == FAST_BODY
    assert requests_counted(registry) == 3.0
    assert (
        registry.get_sample_value(
            "http_server_request_duration_seconds_count", {"method": "GET", "route": "/{tail}"}
        )
        == 3.0
    )
    assert exporter.get_finished_spans() == ()
    assert [e for e in logs.entries if e["event"] == "request"] == []

    # What the fast answer declines takes the normal path.
    assert await (await client.get("/slow")).text() == "from the handler"
    assert requests_counted(registry) == 4.0


async def test_traced_requests_and_faults_take_the_normal_path(
    start: ServerFactory,
    process: ProcessConfig,
    registry: CollectorRegistry,
    no_new_traces: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    app = build(process, registry, no_new_traces)
    client = await start(app)
    # A request of a sampled trace gets its span: the handler answers it.
    resp = await client.get("/fast/a", headers={"traceparent": TRACEPARENT})
    assert await resp.text() == "from the handler"
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /{tail}"

    # An active fault applies to every request, so none may skip it.
    app[FAULTS_KEY].set(ErrorFault(rate=1.0, status=503))
    resp = await client.get("/fast/a")
    assert resp.status == 503
    assert requests_counted(registry, "503") == 1.0


async def test_no_fast_lane_when_every_request_is_traced(
    start: ServerFactory,
    process: ProcessConfig,
    registry: CollectorRegistry,
    exporter: InMemorySpanExporter,
) -> None:
    provider = provider_with(ALWAYS_ON, exporter)
    try:
        app = build(process, registry, provider)
        assert not install_fast_lane(web.Server(slow_path), app)  # type: ignore[arg-type]
        client = await start(app)
        assert await (await client.get("/fast/a")).text() == "from the handler"
        assert len(exporter.get_finished_spans()) == 1
    finally:
        provider.shutdown()


async def test_a_fast_answer_that_fails_falls_back_to_the_normal_path(
    start: ServerFactory,
    process: ProcessConfig,
    registry: CollectorRegistry,
    no_new_traces: TracerProvider,
) -> None:
    def broken(request: web.Request) -> web.Response | None:
        raise ValueError("bad entry")

    app = build(process, registry, no_new_traces)
    app[FAST_LANE_KEY] = FastLane("/{tail}", answer=broken)
    client = await start(app)
    assert await (await client.get("/fast/a")).text() == "from the handler"


async def test_an_untraced_request_still_passes_its_decision_downstream(
    start: ServerFactory, process: ProcessConfig, no_new_traces: TracerProvider
) -> None:
    """Its span is made without the SDK (``unsampled_span_maker``) but still propagates."""
    seen: list[str] = []

    async def calls_downstream(request: web.Request) -> web.Response:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        seen.append(carrier["traceparent"])
        return web.Response(text="ok")

    app = create_base_app(process, registry=CollectorRegistry(), tracer_provider=no_new_traces)
    app.router.add_get("/call", calls_downstream)
    client = await start(app)
    await client.get("/call")
    unsampled_parent = TRACEPARENT[:-2] + "00"
    await client.get("/call", headers={"traceparent": unsampled_parent})
    first, second = seen

    def sampled(traceparent: str) -> bool:
        return bool(int(traceparent.split("-")[3], 16) & 1)

    assert not sampled(first)
    assert first.split("-")[1] != TRACEPARENT.split("-")[1]
    assert second.split("-")[1] == TRACEPARENT.split("-")[1]
    assert second.split("-")[2] != TRACEPARENT.split("-")[2]  # a span of its own
    assert not sampled(second)


async def test_a_handler_lane_serves_untraced_requests_with_their_telemetry(
    start: ServerFactory,
    process: ProcessConfig,
    registry: CollectorRegistry,
    no_new_traces: TracerProvider,
    exporter: InMemorySpanExporter,
    logs: LogCapture,
) -> None:
    """The balancer's kind: an async handler for every untraced request, before routing."""
    routed: list[bool] = []
    downstream: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        try:
            routed.append(request.match_info is not None)
        except AssertionError:  # aiohttp asserts there is one: never routed
            routed.append(False)
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        downstream.append(carrier["traceparent"])
        if request.path == "/boom":
            raise RuntimeError("upstream parser bug")
        return web.Response(text="proxied")

    app = create_base_app(process, registry=registry, tracer_provider=no_new_traces)
    resource = app.router.add_resource("/{tail:.*}")
    resource.add_route("*", proxy)
    app[FAST_LANE_KEY] = FastLane(resource.canonical, handler=proxy)
    client = await start(app)

    assert await (await client.get("/a")).text() == "proxied"
    assert routed == [False]  # served before the router
    assert downstream[0].split("-")[3] in ("00", "02")  # not sampled, and says so downstream
    assert requests_counted(registry) == 1.0
    assert app[IN_FLIGHT_KEY].count == 0
    assert (await client.get("/healthz")).status == 200  # quiet routes keep their own handler

    resp = await client.get("/boom")
    assert resp.status == 500
    assert (await resp.json())["code"] == "internal"
    assert requests_counted(registry, "500") == 1.0
    (line,) = [e for e in logs.entries if e["event"] == "request" and e["path"] == "/boom"]
    assert line["status"] == 500
    assert line["log_level"] == "warning"
    assert exporter.get_finished_spans() == ()

    # A request of a sampled trace goes through the router and gets its span.
    await client.get("/a", headers={"traceparent": TRACEPARENT})
    assert routed[-1] is True
    assert len(exporter.get_finished_spans()) == 1


def test_a_fast_lane_has_one_way_to_serve() -> None:
    with pytest.raises(ValueError, match="either"):
        FastLane("/{tail}")
    with pytest.raises(ValueError, match="either"):
        FastLane("/{tail}", answer=fast_answer, handler=slow_path)
