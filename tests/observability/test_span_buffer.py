"""``LoopSpanProcessor``: span files written on the event loop, in batches, and at shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from mesh.process import ProcessConfig
from observability.otlp_json import encode_otlp_json, span_file_path
from observability.span_buffer import LoopSpanProcessor
from observability.tracing import LOOP_BATCH, build_tracer_provider


class Batches(InMemorySpanExporter):
    """Records the size of each exported batch; ``exported`` is set at each export."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.exported = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.sizes.append(len(spans))
        self.exported.set()
        return super().export(spans)


def _provider(processor: LoopSpanProcessor) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(processor)
    return provider


def _emit(provider: TracerProvider, n: int) -> None:
    tracer = provider.get_tracer("t")
    for i in range(n):
        tracer.start_span(f"s{i}").end()


def test_without_a_loop_full_batches_and_shutdown_export() -> None:
    exporter = Batches()
    provider = _provider(LoopSpanProcessor(exporter, batch_size=4, schedule_delay_s=60.0))
    _emit(provider, 6)
    assert exporter.sizes == [4]  # the full batch, synchronously
    provider.shutdown()
    assert exporter.sizes == [4, 2]
    assert [s.name for s in exporter.get_finished_spans()] == [f"s{i}" for i in range(6)]


def test_force_flush_exports_what_waits() -> None:
    exporter = Batches()
    provider = _provider(LoopSpanProcessor(exporter, batch_size=4, schedule_delay_s=60.0))
    _emit(provider, 3)
    assert exporter.sizes == []
    assert provider.force_flush()
    assert exporter.sizes == [3]
    provider.shutdown()
    assert exporter.sizes == [3]


async def test_on_a_loop_a_full_batch_is_exported_after_the_current_callback() -> None:
    exporter = Batches()
    provider = _provider(LoopSpanProcessor(exporter, batch_size=4, schedule_delay_s=60.0))
    _emit(provider, 5)
    assert exporter.sizes == []  # not inside on_end: the request is answered first
    await asyncio.sleep(0)
    assert exporter.sizes == [4, 1]
    provider.shutdown()


async def test_on_a_loop_spans_are_exported_after_the_delay() -> None:
    exporter = Batches()
    provider = _provider(LoopSpanProcessor(exporter, batch_size=100, schedule_delay_s=0.05))
    _emit(provider, 3)
    await asyncio.sleep(0)
    assert exporter.sizes == []
    assert not exporter.exported.is_set()
    loop = asyncio.get_running_loop()
    # The flush runs on this loop: wait for it (5 s at most) without blocking the loop.
    assert await loop.run_in_executor(None, exporter.exported.wait, 5.0)
    assert exporter.sizes == [3]
    exporter.exported.clear()
    _emit(provider, 2)  # a new timer for the next batch
    assert await loop.run_in_executor(None, exporter.exported.wait, 5.0)
    assert exporter.sizes == [3, 2]
    provider.shutdown()


def test_the_buffer_is_bounded() -> None:
    exporter = Batches()
    processor = LoopSpanProcessor(exporter, max_queue_size=4, batch_size=4)

    async def emit() -> None:  # on a loop, with no chance for the flush to run
        _emit(_provider(processor), 10)

    asyncio.run(emit())
    processor.shutdown()
    assert sum(exporter.sizes) == 4


def test_unsampled_spans_are_not_exported() -> None:
    exporter = Batches()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(LoopSpanProcessor(exporter, batch_size=1))
    _emit(provider, 3)
    provider.shutdown()
    assert exporter.sizes == []


def test_after_shutdown_spans_are_ignored() -> None:
    exporter = Batches()
    processor = LoopSpanProcessor(exporter, batch_size=1)
    provider = _provider(processor)
    provider.shutdown()
    _emit(provider, 2)
    processor.force_flush()
    assert exporter.sizes == []


def test_invalid_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        LoopSpanProcessor(InMemorySpanExporter(), batch_size=0)
    with pytest.raises(ValueError, match="max_queue_size"):
        LoopSpanProcessor(InMemorySpanExporter(), max_queue_size=2, batch_size=4)


async def test_span_file_lines_are_the_encoders_lines(process: ProcessConfig) -> None:
    """Spans ended on the loop reach the run folder's file, one batch a line, byte for byte
    what ``encode_otlp_json`` gives for the same spans."""
    provider = build_tracer_provider(process, env={})
    memory = InMemorySpanExporter()
    provider.add_span_processor(LoopSpanProcessor(memory, batch_size=1000))
    _emit(provider, LOOP_BATCH + 5)
    await asyncio.sleep(0)  # the full batch
    await asyncio.to_thread(provider.shutdown)  # the rest, as the app's cleanup does
    spans = memory.get_finished_spans()
    assert len(spans) == LOOP_BATCH + 5
    path = span_file_path(process.run_dir, process.instance_id)
    assert path.read_text() == (
        encode_otlp_json(spans[:LOOP_BATCH]) + "\n" + encode_otlp_json(spans[LOOP_BATCH:]) + "\n"
    )
