"""Tracing configuration from OTEL_* and the OTLP-JSON span files with their reader."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode

from mesh.errors import ConfigError
from mesh.process import ProcessConfig
from observability.otlp_json import OtlpJsonLinesExporter, span_file_path
from observability.sampling import ParentBasedRateLimiting, RateLimitingSampler
from observability.spans import (
    SpanFileStats,
    SpanStatus,
    by_trace,
    children_of,
    load_spans,
    parse_line,
    roots,
)
from observability.spans import (
    SpanKind as RecordKind,
)
from observability.tracing import (
    TracingConfig,
    build_resource,
    build_sampler,
    build_tracer_provider,
)


def test_config_defaults_to_span_files_and_the_process_service(process: ProcessConfig) -> None:
    config = TracingConfig.from_env(process, {})
    assert config.service_name == "shop"
    assert config.endpoint is None
    assert config.span_file == process.run_dir / "traces" / "shop-1.jsonl"
    assert config.sampler == "parentbased_ratelimiting"
    assert config.sampler_arg == 100.0
    sampler = build_sampler(config.sampler, config.sampler_arg)
    assert isinstance(sampler, ParentBasedRateLimiting)
    assert sampler.limiter.per_second == 100.0


def test_the_ratio_samplers_keep_their_own_default_argument(process: ProcessConfig) -> None:
    config = TracingConfig.from_env(process, {"OTEL_TRACES_SAMPLER": "traceidratio"})
    assert config.sampler_arg == 1.0
    limited = TracingConfig.from_env(
        process, {"OTEL_TRACES_SAMPLER": "ratelimiting", "OTEL_TRACES_SAMPLER_ARG": "5"}
    )
    assert isinstance(build_sampler(limited.sampler, limited.sampler_arg), RateLimitingSampler)


def test_config_reads_the_standard_variables(process: ProcessConfig) -> None:
    config = TracingConfig.from_env(
        process,
        {
            "OTEL_SERVICE_NAME": "shop-eu",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        },
    )
    assert config.service_name == "shop-eu"
    assert config.endpoint == "http://collector:4318/v1/traces"
    sampler = build_sampler(config.sampler, config.sampler_arg)
    assert isinstance(sampler, ParentBased)
    assert "0.25" in sampler.get_description()  # type: ignore[no-untyped-call]

    specific = TracingConfig.from_env(
        process,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/custom/traces",
        },
    )
    assert specific.endpoint == "http://jaeger:4318/custom/traces"
    assert isinstance(build_sampler("traceidratio", 0.5), TraceIdRatioBased)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http/protobuf"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "[0, 1]"),
        ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "not a number"),
        ({"OTEL_TRACES_SAMPLER_ARG": "-1"}, "per second"),
    ],
)
def test_config_rejects_bad_values(
    process: ProcessConfig, env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        TracingConfig.from_env(process, env)


def _emit_spans(provider: TracerProvider) -> tuple[str, str, str]:
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("GET /orders/{id}", kind=SpanKind.SERVER) as server:
        server.set_attribute("http.route", "/orders/{id}")
        server.set_attribute("http.response.status_code", 503)
        with tracer.start_as_current_span("payments/Charge", kind=SpanKind.CLIENT) as client:
            client.set_status(Status(StatusCode.ERROR, "upstream unavailable"))
            client.add_event("retry", {"attempt": 2})
    sc, cc = server.get_span_context(), client.get_span_context()
    return format(sc.trace_id, "032x"), format(sc.span_id, "016x"), format(cc.span_id, "016x")


def test_span_file_lines_are_otlp_json_with_hex_ids(process: ProcessConfig) -> None:
    path = span_file_path(process.run_dir, process.instance_id)
    provider = TracerProvider(resource=build_resource(TracingConfig.from_env(process, {})))
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonLinesExporter(path)))
    trace_id, server_id, client_id = _emit_spans(provider)
    provider.shutdown()

    lines = path.read_text().splitlines()
    assert len(lines) == 2  # SimpleSpanProcessor: one request per span
    request = json.loads(lines[0])
    span = request["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == trace_id  # hex, not base64
    assert span["spanId"] == client_id
    assert span["parentSpanId"] == server_id
    assert span["kind"] == 3  # enums as integers
    assert isinstance(span["startTimeUnixNano"], str)  # int64 as strings
    assert span["status"]["code"] == 2
    resource = {
        a["key"]: a["value"]["stringValue"]
        for a in request["resourceSpans"][0]["resource"]["attributes"]
    }
    assert resource["service.name"] == "shop"
    assert resource["service.instance.id"] == "shop-1"
    assert resource["service.version"] == "v7"


def test_reader_reads_spans_back(process: ProcessConfig) -> None:
    provider = build_tracer_provider(process, env={})  # no endpoint: the run folder's file
    trace_id, server_id, client_id = _emit_spans(provider)
    provider.shutdown()  # flushes the batch processor
    (process.run_dir / "traces" / "other.jsonl").write_text('{"resourceSpans": [\n')  # torn

    stats = SpanFileStats()
    spans = load_spans(process.run_dir, stats)
    assert stats.files == 2
    assert stats.bad_lines == 1
    assert len(spans) == 2
    server, client = spans  # ordered by start time
    assert (server.trace_id, server.span_id, server.parent_span_id) == (trace_id, server_id, None)
    assert (client.trace_id, client.span_id, client.parent_span_id) == (
        trace_id,
        client_id,
        server_id,
    )
    assert server.name == "GET /orders/{id}"
    assert server.kind is RecordKind.SERVER
    assert client.kind is RecordKind.CLIENT
    assert server.service == "shop"
    assert server.instance_id == "shop-1"
    assert server.attributes["http.response.status_code"] == 503
    assert server.attributes["http.route"] == "/orders/{id}"
    assert client.status is SpanStatus.ERROR
    assert client.status_message == "upstream unavailable"
    assert client.events[0].name == "retry"
    assert client.events[0].attributes == {"attempt": 2}
    assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
    assert by_trace(spans) == {trace_id: [server, client]}
    assert children_of(server, spans) == [client]
    assert roots(spans) == [server]


def test_reader_accepts_collector_variants() -> None:
    line = json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": "x"}}]
                    },
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": "CvdlGRbNQ92ESOshHIAxnA==",  # base64
                                    "spanId": "t61rcWkgMzE=",
                                    "parentSpanId": "",
                                    "name": "GET",
                                    "kind": "SPAN_KIND_SERVER",
                                    "startTimeUnixNano": "1",
                                    "endTimeUnixNano": "2",
                                    "status": {"code": "STATUS_CODE_ERROR"},
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    )
    (span,) = parse_line(line)
    assert span.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert span.span_id == "b7ad6b7169203331"
    assert span.parent_span_id is None
    assert span.kind is RecordKind.SERVER
    assert span.status is SpanStatus.ERROR
    assert span.duration_s == pytest.approx(1e-9)


def test_sdk_disabled_records_nothing(process: ProcessConfig) -> None:
    provider = build_tracer_provider(process, env={"OTEL_SDK_DISABLED": "true"})
    with provider.get_tracer("t").start_as_current_span("nothing") as span:
        assert not span.is_recording()
    provider.shutdown()
    assert not (process.run_dir / "traces").exists()


def test_span_file_names_are_safe(tmp_path: Path) -> None:
    assert span_file_path(tmp_path, "../orders/1").name == ".._orders_1.jsonl"
    assert span_file_path(tmp_path, "../orders/1").parent == tmp_path / "traces"


@pytest.mark.parametrize("span_files", ["1", "0"])
async def test_spans_go_to_an_otlp_endpoint_when_configured(
    process: ProcessConfig, aiohttp_server: Any, span_files: str
) -> None:
    received: list[ExportTraceServiceRequest] = []

    async def collect(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    collector = await aiohttp_server(app)
    provider = build_tracer_provider(
        process,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": str(collector.make_url("/")),
            "TESTBED_SPAN_FILES": span_files,
        },
    )
    trace_id, _, _ = _emit_spans(provider)
    await asyncio.to_thread(provider.shutdown)  # the exporter is synchronous: off the loop

    spans = [
        span
        for request in received
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    assert {span.name for span in spans} == {"GET /orders/{id}", "payments/Charge"}
    assert {span.trace_id.hex() for span in spans} == {trace_id}
    # By default the run folder keeps the same spans (the chaos engine reads them there).
    if span_files == "1":
        on_disk = load_spans(process.run_dir)
        assert {s.name for s in on_disk} == {"GET /orders/{id}", "payments/Charge"}
        assert {s.trace_id for s in on_disk} == {trace_id}
    else:
        assert not (process.run_dir / "traces").exists()
