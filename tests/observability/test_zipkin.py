"""Span files to Zipkin: the conversion of real SDK spans, and the shipper against a small real
HTTP server standing in for Zipkin's collector (offsets advance only when it took the batch)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from observability.otlp_json import encode_otlp_json
from observability.zipkin import ShipperConfig, ZipkinShipper, otlp_to_zipkin


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def checkout_spans() -> list[ReadableSpan]:
    keep = _Keep()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "orders", "service.instance.id": "orders-2"})
    )
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span(
        "POST /api/checkout", kind=SpanKind.SERVER, attributes={"http.response.status_code": 502}
    ) as server:
        with tracer.start_as_current_span(
            "payments/Charge", kind=SpanKind.CLIENT, attributes={"server.address": "payments"}
        ) as client:
            client.add_event("retry", {"attempt": 2})
        server.set_status(Status(StatusCode.ERROR, "payments unavailable"))
    provider.shutdown()
    return keep.spans


def test_a_span_file_line_becomes_zipkin_v2_spans() -> None:
    spans = checkout_spans()
    line = json.loads(encode_otlp_json(spans))
    client, server = otlp_to_zipkin(line)
    assert server["traceId"] == client["traceId"] == f"{spans[0].context.trace_id:032x}"
    assert client["parentId"] == server["id"] == f"{spans[1].context.span_id:016x}"
    assert "parentId" not in server
    assert (server["kind"], client["kind"]) == ("SERVER", "CLIENT")
    assert server["localEndpoint"] == {"serviceName": "orders"}
    assert server["tags"]["service.instance.id"] == "orders-2"
    assert server["tags"]["http.response.status_code"] == "502"
    assert server["tags"]["error"] == "payments unavailable"
    assert "error" not in client["tags"]
    assert client["remoteEndpoint"] == {"serviceName": "payments"}
    assert "remoteEndpoint" not in server
    assert [a["value"] for a in client["annotations"]] == ["retry"]
    assert server["timestamp"] == (spans[1].start_time or 0) // 1000
    assert server["duration"] >= 1
    assert server["timestamp"] <= client["timestamp"]


async def test_the_shipper_posts_new_lines_and_keeps_them_while_zipkin_refuses(
    tmp_path: Path,
) -> None:
    received: list[list[dict[str, Any]]] = []
    refuse = True

    async def spans(request: web.Request) -> web.Response:
        if refuse:
            return web.Response(status=503)
        received.append(await request.json())
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/api/v2/spans", spans)
    traces = tmp_path / "traces"
    traces.mkdir()
    span_file = traces / "orders-2.jsonl"
    line = encode_otlp_json(checkout_spans())
    span_file.write_text(line + "\n" + line[:40])  # the second line is still being written
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        shipper = ZipkinShipper(ShipperConfig(traces, str(server.make_url(""))))
        with pytest.raises(aiohttp.ClientResponseError, match="503"):
            await shipper.ship_once(http)
        assert shipper.offsets.get(span_file, 0) == 0  # refused: read again next round
        refuse = False
        assert await shipper.ship_once(http) == 2
        assert [s["name"] for s in received[0]] == ["payments/Charge", "POST /api/checkout"]
        assert shipper.offsets[span_file] == len(line) + 1  # the partial line waits
        assert await shipper.ship_once(http) == 0
        with span_file.open("a") as f:
            f.write(line[40:] + "\n")
        assert await shipper.ship_once(http) == 2
        assert len(received) == 2


def test_a_client_span_to_an_address_is_not_taken_for_a_service() -> None:
    line = json.loads(encode_otlp_json(checkout_spans()))
    span = line["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["attributes"] = [
        {"key": "server.address", "value": {"stringValue": "127.0.0.1"}},
        {"key": "server.port", "value": {"intValue": "20044"}},
    ]
    client = otlp_to_zipkin(line)[0]
    assert client["remoteEndpoint"] == {"ipv4": "127.0.0.1", "port": 20044}
