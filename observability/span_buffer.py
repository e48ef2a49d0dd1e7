"""A span processor that exports span files from the event loop's own thread.

The SDK's ``BatchSpanProcessor`` exports from a worker thread. For the span file that export
is pure Python (encoding OTLP/JSON, ~10 us a span), so the worker competes with the event
loop for the GIL: each time the loop releases it (a socket read or write), the worker may take
it and the loop waits for it to be handed back. ``LoopSpanProcessor`` instead keeps finished
spans in a bounded list and encodes and writes them on the loop, in small batches, between
requests: the same work, without the hand-offs.

Flushes happen: ``schedule_delay_s`` after the first span of a batch ended (a timer on the
loop that span ended on), as soon as ``batch_size`` spans are waiting (scheduled with
``call_soon``, so the request that ended the span is answered first), and on
``force_flush``/``shutdown`` (synchronously, from whichever thread calls them). Spans ended
where no loop runs (scripts, tests using a provider without an app) are written when
``batch_size`` are waiting, and on ``force_flush``/``shutdown``.

The write is an append of one line of a few tens of kilobytes to a local file: a buffered
``write`` into the page cache, cheaper than handing it to a thread.

Why hand-written: the SDK has only the synchronous and the threaded processors.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Final

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter

from observability.logs import get_logger

__all__ = ["LoopSpanProcessor"]

log = get_logger(__name__)

_get_running_loop: Final = asyncio._get_running_loop  # the C helper: no exception when none


class LoopSpanProcessor(SpanProcessor):
    """Buffers ended spans (at most ``max_queue_size``) and exports them on the event loop."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int = 4096,
        batch_size: int = 64,
        schedule_delay_s: float = 1.0,
    ) -> None:
        if batch_size < 1 or max_queue_size < batch_size:
            raise ValueError("need 1 <= batch_size <= max_queue_size")
        self._exporter = exporter
        self._max_queue = max_queue_size
        self._batch_size = batch_size
        self._delay = schedule_delay_s
        self._spans: list[ReadableSpan] = []
        self._lock = threading.Lock()
        self._export_lock = threading.Lock()
        self._dropped = 0
        self._shut_down = False
        # The loops a timed flush and an immediate one (batch full) are scheduled on (None:
        # none is); a loop, not a flag, so a loop closed with a flush pending (tests) is
        # not waited for by the next one.
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._soon_loop: asyncio.AbstractEventLoop | None = None

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self._shut_down:
            return
        ctx = span.context
        if ctx is None or not ctx.trace_flags.sampled:
            return
        with self._lock:
            if len(self._spans) >= self._max_queue:
                self._dropped += 1
                return
            self._spans.append(span)
            waiting = len(self._spans)
        loop = _get_running_loop()
        if loop is None:
            if waiting >= self._batch_size:
                self._export_all()
            return
        if waiting >= self._batch_size:
            if self._soon_loop is not loop:
                self._soon_loop = loop
                loop.call_soon(self._flush_on_loop)
        elif self._timer_loop is not loop:
            # First span since the last flush (or the timer's loop is gone): flush later.
            self._timer_loop = loop
            self._timer = loop.call_later(self._delay, self._flush_on_loop)

    def _flush_on_loop(self) -> None:
        self._soon_loop = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_loop = None
        self._export_all()

    def _export_all(self) -> None:
        """Export everything waiting, ``batch_size`` spans per line."""
        with self._export_lock:
            with self._lock:
                spans, self._spans = self._spans, []
                dropped, self._dropped = self._dropped, 0
            if dropped:
                log.warning("spans_dropped", count=dropped, reason="span buffer full")
            for i in range(0, len(spans), self._batch_size):
                try:
                    self._exporter.export(spans[i : i + self._batch_size])
                except Exception as exc:  # an exporter error must not reach the loop
                    log.warning("span_export_failed", error=str(exc))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._export_all()
        return self._exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        self._export_all()
        self._exporter.shutdown()
