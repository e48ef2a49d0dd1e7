"""A span exporter writing OTLP/JSON lines, the format of the OTel Collector's file exporter.

Without a collector (no OTLP endpoint configured) every process appends its spans to
``<run_dir>/traces/<instance_id>.jsonl``: one ``ExportTraceServiceRequest`` per line, encoded
as OTLP/JSON (camelCase keys, enums as integers, int64 as strings, trace and span ids as
lowercase hex). The encoding is the SDK's own protobuf encoder plus ``json_format``; only the
ids need fixing up, because proto3 JSON writes ``bytes`` as base64 while OTLP/JSON mandates hex.
The collector has no Python library that writes files, hence this small exporter.

``export`` runs on the batch span processor's worker thread, never on the event loop.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from observability.logs import get_logger

__all__ = ["OtlpJsonLinesExporter", "encode_otlp_json", "span_file_path"]

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

log = get_logger(__name__)


def span_file_path(run_dir: Path, instance_id: str) -> Path:
    """Where the spans of ``instance_id`` go: ``<run_dir>/traces/<instance_id>.jsonl``."""
    return run_dir / "traces" / f"{_UNSAFE.sub('_', instance_id) or 'unknown'}.jsonl"


def _ids_to_hex(node: Any) -> Any:
    """Rewrite base64 ``traceId``/``spanId``/``parentSpanId`` values (anywhere) as hex."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _ids_to_hex(value)
    elif isinstance(node, list):
        for item in node:
            _ids_to_hex(item)
    return node


def encode_otlp_json(spans: Sequence[ReadableSpan]) -> str:
    """One ``ExportTraceServiceRequest`` as a single line of OTLP/JSON."""
    message = encode_spans(spans)
    as_dict = json_format.MessageToDict(
        message,
        preserving_proto_field_name=False,
        use_integers_for_enums=True,
    )
    return json.dumps(_ids_to_hex(as_dict), separators=(",", ":"))


class OtlpJsonLinesExporter(SpanExporter):
    """Appends each exported batch as one OTLP/JSON line to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._shut_down = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shut_down:
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        line = encode_otlp_json(spans) + "\n"
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(line)
        except OSError as exc:
            log.warning("span_file_write_failed", path=str(self.path), error=str(exc))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._shut_down = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
