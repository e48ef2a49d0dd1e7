"""The direct OTLP/JSON encoder writes exactly what the protobuf + ``json_format`` route writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mesh.errors import ConfigError
from mesh.process import ProcessConfig
from observability.otlp_json import (
    OtlpJsonLinesExporter,
    encode_otlp_json,
    encode_otlp_json_via_protobuf,
    span_file_path,
)
from observability.spans import SpanKind as RecordKind
from observability.spans import SpanStatus, load_spans, parse_line, span_files
from observability.tracing import TracingConfig

REMOTE = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "vendor=abc,other=x-1",
}


def _provider(
    exporter: InMemorySpanExporter, resource: Resource, limits: SpanLimits | None = None
) -> TracerProvider:
    provider = TracerProvider(resource=resource, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _spans() -> list[ReadableSpan]:
    """Spans covering every field the encoder writes, from two resources and three scopes."""
    exporter = InMemorySpanExporter()
    main = _provider(
        exporter,
        Resource.create(
            {"service.name": "shop", "service.instance.id": "shop-1", "service.version": "v7"}
        ),
    )
    other = _provider(
        exporter,
        Resource({"service.name": "other", "k8s.pod.uid": 7}, schema_url="https://x/1.2"),
        limits=SpanLimits(max_span_attributes=2, max_events=1, max_links=1),
    )
    tracer = main.get_tracer("testbed")
    versioned = main.get_tracer("lib", "1.2.3", schema_url="https://opentelemetry.io/schemas/1")
    parent = TraceContextTextMapPropagator().extract(REMOTE)
    with tracer.start_as_current_span(
        "GET /orders/{id}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "GET",
            "server.port": 8080,
            "ratio": 0.25,
            "whole": 2.0,
            "large": 1e300,
            "neg": -(2**63),
            "flag": False,
            "empty": "",
            "zero": 0,
            "tags": ("a", "b"),
            "ints": (1, 2, 3),
            "floats": (1.5, math.inf),
            "bools": (True, False),
            "unicode": "caf\u00e9 \u2603 \U0001f600",
        },
    ) as server:
        server.add_event("cache_miss")
        server.add_event("retry", {"attempt": 2, "why": "reset"}, timestamp=1_700_000_000_000)
        server.set_attribute("http.response.status_code", 503)
        server.set_attribute("nan", math.nan)
        server.set_attribute("minus_inf", -math.inf)
        server.set_status(Status(StatusCode.ERROR, "upstream unavailable"))
        with versioned.start_as_current_span(
            "payments/Charge",
            kind=SpanKind.CLIENT,
            links=[Link(server.get_span_context(), {"reason": "follows"})],
        ) as client:
            client.set_status(Status(StatusCode.OK))
        with tracer.start_as_current_span("", kind=SpanKind.INTERNAL, start_time=12345):
            pass
    limited = other.get_tracer("limited")
    with limited.start_as_current_span(
        "work",
        kind=SpanKind.CONSUMER,
        attributes={"a": 1, "b": 2, "c": 3},
        links=[Link(server.get_span_context()), Link(client.get_span_context())],
    ) as span:
        span.add_event("one")
        span.add_event("two")
    with limited.start_as_current_span("produce", kind=SpanKind.PRODUCER):
        pass
    with tracer.start_as_current_span("after the other resource"):
        pass
    main.shutdown()
    other.shutdown()
    return list(exporter.get_finished_spans())


@pytest.fixture(scope="module")
def spans() -> list[ReadableSpan]:
    return _spans()


def test_the_direct_encoder_matches_the_protobuf_route(spans: list[ReadableSpan]) -> None:
    assert len(spans) == 6
    direct = encode_otlp_json(spans)
    assert direct == encode_otlp_json_via_protobuf(spans)
    request = json.loads(direct)
    assert len(request["resourceSpans"]) == 2
    assert [len(r["scopeSpans"]) for r in request["resourceSpans"]] == [2, 1]


@pytest.mark.parametrize("index", range(6))
def test_each_span_alone_matches(spans: list[ReadableSpan], index: int) -> None:
    one = [spans[index]]
    assert encode_otlp_json(one) == encode_otlp_json_via_protobuf(one)


def test_no_spans_is_an_empty_request() -> None:
    assert encode_otlp_json([]) == encode_otlp_json_via_protobuf([]) == "{}"


def test_what_it_writes_reads_back(spans: list[ReadableSpan]) -> None:
    records = {r.name: r for r in parse_line(encode_otlp_json(spans))}
    server = records["GET /orders/{id}"]
    assert server.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert server.parent_span_id == "b7ad6b7169203331"
    assert server.kind is RecordKind.SERVER
    assert server.status is SpanStatus.ERROR
    assert server.status_message == "upstream unavailable"
    assert server.attributes["http.response.status_code"] == 503
    assert server.attributes["tags"] == ("a", "b")
    assert server.attributes["unicode"] == "caf\u00e9 \u2603 \U0001f600"
    assert [e.name for e in server.events] == ["cache_miss", "retry"]
    assert records["payments/Charge"].status is SpanStatus.OK
    assert records["work"].service == "other"


def test_the_memo_changes_nothing(spans: list[ReadableSpan]) -> None:
    memo: dict[tuple[str, type, object], str] = {}
    first = encode_otlp_json(spans, memo=memo)
    assert memo  # filled by the first call ...
    assert encode_otlp_json(spans, memo=memo) == first == encode_otlp_json_via_protobuf(spans)


def test_span_files_are_rotated_and_bounded(spans: list[ReadableSpan], tmp_path: Path) -> None:
    path = span_file_path(tmp_path, "cdn-us")
    line = len(encode_otlp_json(spans[:1]).encode()) + 1
    exporter = OtlpJsonLinesExporter(path, max_bytes=3 * line, backups=2)
    for _ in range(20):  # three lines a file, three files: the newest 8 lines are kept
        exporter.export(spans[:1])
    names = sorted(p.name for p in (tmp_path / "traces").iterdir())
    assert names == ["cdn-us.jsonl", "cdn-us~1.jsonl", "cdn-us~2.jsonl"]
    for each in (tmp_path / "traces").iterdir():
        assert each.stat().st_size <= 3 * line
    assert span_files(tmp_path / "traces") == sorted((tmp_path / "traces").iterdir())
    # The readers see the rotated files too: 2 lines in the current file, 3 in each other.
    assert len(load_spans(tmp_path)) == 8
    # A new exporter (a restarted process) goes on from the file's size, bounded all the same.
    again = OtlpJsonLinesExporter(path, max_bytes=3 * line, backups=2)
    for _ in range(2):
        again.export(spans[:1])
    assert path.stat().st_size == line
    assert len(load_spans(tmp_path)) == 7


def test_without_backups_a_full_span_file_starts_over(
    spans: list[ReadableSpan], tmp_path: Path
) -> None:
    path = tmp_path / "x.jsonl"
    exporter = OtlpJsonLinesExporter(path, max_bytes=1, backups=0)
    for _ in range(3):
        exporter.export(spans[:1])
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]
    assert len(path.read_text().splitlines()) == 1


def test_span_file_limits_come_from_the_environment(tmp_path: Path) -> None:
    process = ProcessConfig(service="s", instance_id="s-1", run_dir=tmp_path)
    config = TracingConfig.from_env(
        process, {"TESTBED_SPAN_FILE_BYTES": "65536", "TESTBED_SPAN_FILE_BACKUPS": "1"}
    )
    assert (config.span_file_bytes, config.span_file_backups) == (65536, 1)
    with pytest.raises(ConfigError, match="TESTBED_SPAN_FILE_BYTES"):
        TracingConfig.from_env(process, {"TESTBED_SPAN_FILE_BYTES": "10"})
