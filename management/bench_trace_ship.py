"""Benchmark: what feeding the trace UI costs, per span, for each way of doing it.

``python -m management.bench_trace_ship [--spans N]`` records ``N`` spans shaped like a
checkout's hops (server and client spans with the HTTP and RPC attributes the services set),
then times, per span:

* **exporter** — OpenTelemetry's Zipkin JSON exporter in every process: its encoder turning
  spans into Zipkin v2 JSON. That work (plus an HTTP POST) would run in each service, on the
  batch processor's thread that competes with the event loop for the GIL. Measured only when
  ``opentelemetry-exporter-zipkin-json`` is importable (it is not a dependency: this is what the
  testbed chose not to do).
* **span file** — what each process already pays for the span file that localisation and
  ``testbed traces`` read (``encode_otlp_json``), whichever way the trace UI is fed.
* **shipper** — ``observability.zipkin`` reading those lines and converting them to Zipkin v2
  JSON: in its own process, nothing added to the services.

Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from observability.otlp_json import encode_otlp_json
from observability.zipkin import span_lines_to_zipkin

BATCH = 64


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def record(n: int) -> list[ReadableSpan]:
    keep = _Keep()
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "orders", "service.instance.id": "orders-1", "service.version": "v1"}
        )
    )
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("bench")
    while len(keep.spans) < n:
        with (
            tracer.start_as_current_span(
                "POST /testbed.orders.v1.OrderService/PlaceOrder",
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": "POST",
                    "url.path": "/testbed.orders.v1.OrderService/PlaceOrder",
                    "http.route": "/testbed.orders.v1.OrderService/PlaceOrder",
                    "http.response.status_code": 200,
                    "server.address": "127.0.0.1",
                },
            ),
            tracer.start_as_current_span(
                "testbed.payments.v1.PaymentService/Charge",
                kind=SpanKind.CLIENT,
                attributes={
                    "rpc.system": "testbed",
                    "rpc.service": "testbed.payments.v1.PaymentService",
                    "rpc.method": "Charge",
                    "server.address": "127.0.0.1",
                    "server.port": 20044,
                    "testbed.attempt": 1,
                },
            ),
        ):
            pass
    provider.shutdown()
    return keep.spans[:n]


def per_span_us(spans: list[ReadableSpan], work: Callable[[list[ReadableSpan]], object]) -> float:
    batches = [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for batch in batches:
            work(batch)
        best = min(best, time.perf_counter() - started)
    return best / len(spans) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=20000)
    args = parser.parse_args()
    spans = record(args.spans)
    file_us = per_span_us(spans, encode_otlp_json)
    lines = {id(b[0]): encode_otlp_json(b).encode() for b in _batches(spans)}

    def ship(batch: list[ReadableSpan]) -> object:
        return json.dumps(list(span_lines_to_zipkin([lines[id(batch[0])]])))

    ship_us = per_span_us(spans, ship)
    print(f"span file (already paid in every process): {file_us:6.1f} us/span")
    try:
        from opentelemetry.exporter.zipkin.encoder import Protocol  # type: ignore[import-not-found]
        from opentelemetry.exporter.zipkin.json import ZipkinExporter  # type: ignore[import-not-found]
    except ImportError:
        print(
            "exporter: opentelemetry-exporter-zipkin-json is not installed "
            "(pip install it to measure)"
        )
    else:
        exporter = ZipkinExporter(version=Protocol.V2)
        encoder, endpoint = exporter.encoder, exporter.local_node
        exporter_us = per_span_us(spans, lambda b: encoder.serialize(b, endpoint))
        print(
            f"exporter in every process (encoding only, before its HTTP POST): "
            f"{exporter_us:6.1f} us/span on the services' CPU"
        )
    print(f"shipper, in its own process (read, convert, encode): {ship_us:6.1f} us/span")
    print("added to the services by the shipper: 0 us/span (it reads the span files)")


def _batches(spans: list[ReadableSpan]) -> list[list[ReadableSpan]]:
    return [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]


if __name__ == "__main__":
    main()
