"""The base app in process: RED metrics, server spans, canonical log lines, JSON errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from structlog.testing import LogCapture

from mesh.process import ProcessConfig
from observability.app import READINESS_KEY, create_base_app
from observability.logs import get_logger

log = get_logger("tests.app")

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]

PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"


async def get_order(request: web.Request) -> web.Response:
    log.info("order_loaded", order_id=request.match_info["order_id"])
    return web.json_response({"id": request.match_info["order_id"]})


async def fail(request: web.Request) -> web.Response:
    raise RuntimeError("secret detail that must not leak")


async def teapot(request: web.Request) -> web.Response:
    raise web.HTTPBadRequest(reason="quantity must be positive")


def build(
    process: ProcessConfig, registry: CollectorRegistry, provider: TracerProvider
) -> web.Application:
    app = create_base_app(process, registry=registry, tracer_provider=provider)
    app.router.add_get("/orders/{order_id}", get_order)
    app.router.add_get("/fail", fail)
    app.router.add_get("/bad", teapot)
    return app


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory,
    process: ProcessConfig,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(build(process, registry, tracer_provider))


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_red_metrics_use_route_templates(
    client: TestClient[web.Request, web.Application], registry: CollectorRegistry
) -> None:
    for order_id in ("1", "2", "3"):
        assert (await client.get(f"/orders/{order_id}")).status == 200
    assert (await client.get("/no/such/path/42")).status == 404

    text = await (await client.get("/metrics")).text()
    assert 'http_server_requests_total{code="200",method="GET",route="/orders/{order_id}"} 3.0' in (
        text
    )
    assert 'route="unmatched"' in text
    assert "/orders/1" not in text
    assert "/no/such/path" not in text
    assert (
        sample(
            registry,
            "http_server_request_duration_seconds_count",
            method="GET",
            route="/orders/{order_id}",
        )
        == 3
    )
    assert "http_server_requests_in_flight 1.0" in text  # the /metrics call itself
    assert sample(registry, "http_server_requests_in_flight") == 0
    assert 'http_server_requests_total{code="404",method="GET",route="unmatched"} 1.0' in text


async def test_server_span_continues_incoming_trace(
    client: TestClient[web.Request, web.Application], exporter: InMemorySpanExporter
) -> None:
    resp = await client.get("/orders/9", headers={"traceparent": TRACEPARENT})
    assert resp.status == 200

    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /orders/{order_id}"
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == PARENT_TRACE
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_SPAN
    attrs = dict(span.attributes or {})
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.route"] == "/orders/{order_id}"
    assert attrs["url.path"] == "/orders/9"
    assert attrs["http.response.status_code"] == 200
    assert attrs["server.address"] == "127.0.0.1"
    assert isinstance(attrs["server.port"], int)
    assert "error.type" not in attrs
    assert span.resource.attributes["service.name"] == "shop"
    assert span.resource.attributes["service.instance.id"] == "shop-1"
    assert span.resource.attributes["service.version"] == "v7"


async def test_health_and_metrics_are_not_traced(
    client: TestClient[web.Request, web.Application], exporter: InMemorySpanExporter
) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status == 200
    assert exporter.get_finished_spans() == ()


async def test_unhandled_exception_is_a_json_500_without_details(
    client: TestClient[web.Request, web.Application],
    exporter: InMemorySpanExporter,
    logs: LogCapture,
) -> None:
    resp = await client.get("/fail")
    assert resp.status == 500
    body = await resp.json()
    (span,) = exporter.get_finished_spans()
    assert body == {
        "code": "internal",
        "message": "internal error",
        "trace_id": format(span.context.trace_id, "032x"),
    }
    assert "secret" not in await resp.text()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "RuntimeError"
    assert [e.name for e in span.events] == ["exception"]
    (logged,) = [e for e in logs.entries if e["event"] == "unhandled_exception"]
    assert logged["exc_info"] is True
    assert logged["trace_id"] == body["trace_id"]


async def test_http_errors_get_the_shared_shape(
    client: TestClient[web.Request, web.Application], exporter: InMemorySpanExporter
) -> None:
    resp = await client.get("/bad")
    assert resp.status == 400
    body = await resp.json()
    assert body["code"] == "invalid_argument"
    assert body["message"] == "quantity must be positive"
    assert len(body["trace_id"]) == 32

    resp = await client.post("/orders/1")
    assert resp.status == 405
    assert (await resp.json())["code"] == "unimplemented"
    assert "GET" in resp.headers["Allow"]

    resp = await client.get("/nowhere")
    assert (await resp.json())["code"] == "not_found"
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["GET /bad", "POST", "GET"]  # no route matched: just the method
    # 4xx are the client's fault: no error.type, status unset on server spans
    assert all(s.status.status_code is StatusCode.UNSET for s in exporter.get_finished_spans())


async def test_log_lines_inside_a_request_carry_trace_and_span_ids(
    client: TestClient[web.Request, web.Application],
    exporter: InMemorySpanExporter,
    logs: LogCapture,
) -> None:
    await client.get("/orders/5", headers={"traceparent": TRACEPARENT})
    (span,) = exporter.get_finished_spans()
    span_id = format(span.context.span_id, "016x")

    inside = [e for e in logs.entries if e["event"] == "order_loaded"]
    assert len(inside) == 1
    assert inside[0]["trace_id"] == PARENT_TRACE
    assert inside[0]["span_id"] == span_id
    assert inside[0]["service"] == "shop"
    assert inside[0]["instance"] == "shop-1"

    canonical = [e for e in logs.entries if e["event"] == "request"]
    assert len(canonical) == 1, "one canonical line per request"
    line = canonical[0]
    assert line["trace_id"] == PARENT_TRACE
    assert line["span_id"] == span_id
    assert line["route"] == "/orders/{order_id}"
    assert line["path"] == "/orders/5"
    assert line["status"] == 200
    assert line["duration_ms"] >= 0


async def test_log_lines_outside_a_request_have_no_trace_id(logs: LogCapture) -> None:
    log.info("startup_step")
    (entry,) = logs.entries
    assert "trace_id" not in entry
    assert "span_id" not in entry


async def test_readyz_follows_readiness(client: TestClient[web.Request, web.Application]) -> None:
    readiness = client.app[READINESS_KEY]
    assert (await client.get("/readyz")).status == 200
    readiness.ready = False
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["status"] == "starting"
    readiness.ready = True
    readiness.draining = True
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["status"] == "draining"
    assert (await client.get("/healthz")).status == 200
