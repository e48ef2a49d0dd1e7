"""A span exporter writing OTLP/JSON lines, the format of the OTel Collector's file exporter.

Without a collector (no OTLP endpoint configured) every process appends its spans to
``<run_dir>/traces/<instance_id>.jsonl``: one ``ExportTraceServiceRequest`` per line, encoded
as OTLP/JSON (camelCase keys, enums as integers, int64 as strings, trace and span ids as
lowercase hex, fields at their default value left out, keys in field-number order).

Why hand-written: the obvious route (the SDK's protobuf encoder, then protobuf's
``json_format``, then ids rewritten from base64 to hex) costs about 100 us per span, all of
it in pure Python, on the event loop that serves requests (``span_buffer.LoopSpanProcessor``)
or, with the SDK's batch processor, on a thread competing with that loop for the GIL.
``encode_otlp_json`` builds the same JSON document straight from the ``ReadableSpan`` (about
a tenth of that); ``encode_otlp_json_via_protobuf`` keeps the library route, and a test
checks that both give the same line for the same spans. The collector has no Python library
that writes files, hence this small exporter.

Span files are rotated and bounded: when a line would take ``<instance_id>.jsonl`` past
``max_bytes`` (``TESTBED_SPAN_FILE_BYTES``), it becomes ``<instance_id>~1.jsonl`` (the older
ones move up to ``~2`` ... ``~<backups>``, ``TESTBED_SPAN_FILE_BACKUPS``; the oldest is
deleted) and a fresh file starts, so one instance never holds more than
``(1 + backups) * max_bytes`` bytes of spans. ``~`` never appears in an instance's file name,
so rotated files never collide with another instance's, and they match ``*.jsonl`` like the
current one: ``observability.spans.span_files`` lists them all.

``export`` runs on the event loop in small batches (``span_buffer.LoopSpanProcessor``, what
``build_tracer_provider`` uses), or on any thread a processor calls it from (it takes a lock).
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, StatusCode
from opentelemetry.util.types import Attributes

from observability.logs import get_logger

__all__ = [
    "DEFAULT_SPAN_FILE_BACKUPS",
    "DEFAULT_SPAN_FILE_BYTES",
    "OtlpJsonLinesExporter",
    "encode_otlp_json",
    "encode_otlp_json_via_protobuf",
    "rotated_path",
    "span_file_path",
]

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# Span flags (trace.proto SpanFlags): the parent's "is remote" bit is known, and its value.
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UNSET: Final = StatusCode.UNSET
MEMO_PAIRS: Final = 4096
"""Bound of an exporter's memo of encoded attribute pairs."""

_Memo = dict[tuple[str, type, object], str]

log = get_logger(__name__)


DEFAULT_SPAN_FILE_BYTES: Final = 16 * 1024 * 1024
"""A span file is rotated before it grows past this (``TESTBED_SPAN_FILE_BYTES``)."""
DEFAULT_SPAN_FILE_BACKUPS: Final = 3
"""Rotated span files kept per instance (``TESTBED_SPAN_FILE_BACKUPS``)."""
_ROTATED: Final = "~"


def span_file_path(run_dir: Path, instance_id: str) -> Path:
    """Where the spans of ``instance_id`` go: ``<run_dir>/traces/<instance_id>.jsonl``."""
    return run_dir / "traces" / f"{_UNSAFE.sub('_', instance_id) or 'unknown'}.jsonl"


def rotated_path(path: Path, index: int) -> Path:
    """The ``index``-th rotated file of the span file ``path`` (1 is the newest)."""
    return path.with_name(f"{path.stem}{_ROTATED}{index}{path.suffix}")


# -- the direct encoder ----------------------------------------------------------------------
#
# The line is assembled as text, each piece escaped exactly as ``json.dumps`` escapes it
# (``encode_basestring_ascii``, ``int.__repr__``, ``float.__repr__``), so it is the same line,
# byte for byte, as ``json.dumps`` of the library route's dict, without building that dict.

_json_str: Final = json.encoder.encode_basestring_ascii
_int = int.__repr__
_float = float.__repr__


def _double(value: float) -> str:
    if math.isnan(value):
        return '"NaN"'
    if math.isinf(value):
        return '"-Infinity"' if value < 0.0 else '"Infinity"'
    return _float(value)


def _any_value(value: object) -> str:
    """An ``AnyValue``; the same type tests, in the same order, as the SDK's encoder.

    Raises ``ValueError`` for what protobuf would refuse (an int outside int64, a type
    OTLP has no value for); the attribute is then left out, as the SDK's encoder does.
    """
    if value is None:
        return "{}"
    if isinstance(value, bool):
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if isinstance(value, str):
        return '{"stringValue":' + _json_str(value) + "}"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{value} does not fit in int64")
        return '{"intValue":"' + _int(value) + '"}'
    if isinstance(value, float):
        return '{"doubleValue":' + _double(value) + "}"
    if isinstance(value, bytes):
        return '{"bytesValue":"' + base64.b64encode(value).decode("ascii") + '"}'
    if isinstance(value, Sequence):
        if not value:
            return '{"arrayValue":{}}'
        return '{"arrayValue":{"values":[' + ",".join(_any_value(v) for v in value) + "]}}"
    if isinstance(value, Mapping):
        if not value:
            return '{"kvlistValue":{}}'
        pairs = ",".join(_key_value(str(k), v) for k, v in value.items())
        return '{"kvlistValue":{"values":[' + pairs + "]}}"
    raise ValueError(f"invalid type {type(value).__name__} of value {value!r}")


def _key_value(key: str, value: object) -> str:
    if not key:
        return '{"value":' + _any_value(value) + "}"
    return '{"key":' + _json_str(key) + ',"value":' + _any_value(value) + "}"


def _attributes(attributes: Attributes, out: list[str], field: str, memo: _Memo | None) -> None:
    """Append ``,"<field>":[...]`` to ``out`` unless there is no attribute to write.

    ``memo`` keeps the text of recent (key, str/int/bool value) pairs: a server's spans repeat
    most of theirs (method, route, scheme, address, status).
    """
    if not attributes:
        return
    encoded: list[str] = []
    for key, value in attributes.items():
        cls = value.__class__
        memo_key = (key, cls, value) if cls is str or cls is int or cls is bool else None
        if memo is not None and memo_key is not None:
            text = memo.get(memo_key)
            if text is not None:
                encoded.append(text)
                continue
        try:
            text = _key_value(key, value)
        except ValueError as exc:
            log.warning("span_attribute_not_encoded", key=key, error=str(exc))
            continue
        if memo is not None and memo_key is not None:
            if len(memo) >= MEMO_PAIRS:
                memo.clear()
            memo[memo_key] = text
        encoded.append(text)
    if encoded:
        out.append(field)
        out.append(",".join(encoded))
        out.append("]")


def _flags(parent: SpanContext | None) -> str:
    if parent is not None and parent.is_remote:
        return _int(_HAS_IS_REMOTE | _IS_REMOTE)
    return _int(_HAS_IS_REMOTE)


def _link(link: Link) -> str:
    ctx = link.context
    out = [f'{{"traceId":"{ctx.trace_id:032x}","spanId":"{ctx.span_id:016x}"']
    _attributes(link.attributes, out, ',"attributes":[', None)
    if link.dropped_attributes:
        out.append(',"droppedAttributesCount":' + _int(link.dropped_attributes))
    out.append(',"flags":' + _flags(ctx) + "}")
    return "".join(out)


def _event(event: Event) -> str:
    out: list[str] = []
    if event.timestamp:
        out.append(',"timeUnixNano":"' + _int(event.timestamp) + '"')
    if event.name:
        out.append(',"name":' + _json_str(event.name))
    _attributes(event.attributes, out, ',"attributes":[', None)
    if event.dropped_attributes:
        out.append(',"droppedAttributesCount":' + _int(event.dropped_attributes))
    return "{" + "".join(out)[1:] + "}"


def _span(span: ReadableSpan, memo: _Memo | None) -> str:
    ctx = span.context
    assert ctx is not None  # an ended SDK span always has one
    out = [f'{{"traceId":"{ctx.trace_id:032x}","spanId":"{ctx.span_id:016x}"']
    trace_state = ctx.trace_state
    if trace_state:
        joined = ",".join(f"{k}={v}" for k, v in trace_state.items())
        out.append(',"traceState":' + _json_str(joined))
    parent = span.parent
    if parent is not None:
        out.append(f',"parentSpanId":"{parent.span_id:016x}"')
    name = span.name
    if name:
        out.append(',"name":' + _json_str(name))
    out.append(',"kind":' + _int(span.kind.value + 1))  # proto counts UNSPECIFIED as 0
    start, end = span.start_time, span.end_time
    if start:
        out.append(',"startTimeUnixNano":"' + _int(start) + '"')
    if end:
        out.append(',"endTimeUnixNano":"' + _int(end) + '"')
    _attributes(span.attributes, out, ',"attributes":[', memo)
    if span.dropped_attributes:
        out.append(',"droppedAttributesCount":' + _int(span.dropped_attributes))
    events = span.events
    if events:
        out.append(',"events":[' + ",".join(_event(e) for e in events) + "]")
    if span.dropped_events:
        out.append(',"droppedEventsCount":' + _int(span.dropped_events))
    links = span.links
    if links:
        out.append(',"links":[' + ",".join(_link(link) for link in links) + "]")
    if span.dropped_links:
        out.append(',"droppedLinksCount":' + _int(span.dropped_links))
    status = span.status
    if status.description:
        out.append(',"status":{"message":' + _json_str(status.description))
        if status.status_code is not _UNSET:
            out.append(',"code":' + _int(status.status_code.value))
        out.append("}")
    elif status.status_code is not _UNSET:
        out.append(',"status":{"code":' + _int(status.status_code.value) + "}")
    else:
        out.append(',"status":{}')
    out.append(',"flags":' + _flags(parent) + "}")
    return "".join(out)


def _scope(scope: InstrumentationScope | None) -> str:
    if scope is None:
        return "{}"
    out: list[str] = []
    if scope.name:
        out.append(',"name":' + _json_str(scope.name))
    if scope.version:
        out.append(',"version":' + _json_str(scope.version))
    _attributes(scope.attributes, out, ',"attributes":[', None)
    return "{" + "".join(out)[1:] + "}"


def _resource(resource: Resource) -> str:
    out: list[str] = []
    _attributes(resource.attributes, out, '"attributes":[', None)
    return "{" + "".join(out) + "}"


def _grouped(
    spans: Sequence[ReadableSpan], memo: _Memo | None
) -> dict[Resource, dict[InstrumentationScope | None, list[str]]]:
    """Encoded spans by resource, then by instrumentation scope, in first-seen order (as the
    SDK's encoder groups them). Equal objects share a group; a lookup by identity comes
    first, because hashing a ``Resource`` serialises its attributes."""
    groups: dict[Resource, dict[InstrumentationScope | None, list[str]]] = {}
    by_identity: dict[tuple[int, int], list[str]] = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope or None
        ident = (id(resource), id(scope))
        bucket = by_identity.get(ident)
        if bucket is None:
            bucket = groups.setdefault(resource, {}).setdefault(scope, [])
            by_identity[ident] = bucket
        bucket.append(_span(span, memo))
    return groups


def encode_otlp_json(spans: Sequence[ReadableSpan], *, memo: _Memo | None = None) -> str:
    """One ``ExportTraceServiceRequest`` as a single line of OTLP/JSON.

    ``memo`` (optional, kept by the caller between calls, bounded to ``MEMO_PAIRS``) saves
    re-encoding the attribute pairs spans repeat.
    """
    resource_spans: list[str] = []
    for resource, scopes in _grouped(spans, memo).items():
        scope_spans: list[str] = []
        for scope, encoded in scopes.items():
            entry = '{"scope":' + _scope(scope) + ',"spans":[' + ",".join(encoded) + "]"
            if scope is not None and scope.schema_url:
                entry += ',"schemaUrl":' + _json_str(scope.schema_url)
            scope_spans.append(entry + "}")
        group = '{"resource":' + _resource(resource) + ',"scopeSpans":[' + ",".join(scope_spans)
        group += "]"
        if resource.schema_url:
            group += ',"schemaUrl":' + _json_str(resource.schema_url)
        resource_spans.append(group + "}")
    if not resource_spans:
        return "{}"
    return '{"resourceSpans":[' + ",".join(resource_spans) + "]}"


# -- the library route (kept as the reference the direct encoder is tested against) ----------


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


def encode_otlp_json_via_protobuf(spans: Sequence[ReadableSpan]) -> str:
    """The same line as ``encode_otlp_json``, by the SDK's protobuf encoder and ``json_format``
    (slow: the reference for tests)."""
    from google.protobuf import json_format
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    as_dict = json_format.MessageToDict(
        encode_spans(spans),
        preserving_proto_field_name=False,
        use_integers_for_enums=True,
    )
    return json.dumps(_ids_to_hex(as_dict), separators=(",", ":"))


# -- the exporter ----------------------------------------------------------------------------


class OtlpJsonLinesExporter(SpanExporter):
    """Appends each exported batch as one OTLP/JSON line to ``path``, rotating the file
    before it grows past ``max_bytes`` and keeping ``backups`` rotated files (0: the file
    starts over)."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_SPAN_FILE_BYTES,
        backups: int = DEFAULT_SPAN_FILE_BACKUPS,
    ) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be at least 1 and backups at least 0")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._size: int | None = None  # of the current file, once known
        self._memo: _Memo = {}
        self._lock = threading.Lock()
        self._shut_down = False

    def _rotate(self) -> None:
        """The current file becomes ``~1``, ``~k`` becomes ``~k+1``, the oldest goes."""
        path = self.path
        oldest = rotated_path(path, self.backups) if self.backups else path
        oldest.unlink(missing_ok=True)
        for index in range(self.backups - 1, 0, -1):
            older = rotated_path(path, index)
            if older.exists():
                older.replace(rotated_path(path, index + 1))
        if self.backups:
            path.replace(rotated_path(path, 1))
        self._size = 0

    def _append(self, data: bytes) -> None:
        if self._size is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._size = self.path.stat().st_size
            except FileNotFoundError:
                self._size = 0
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        with self.path.open("ab") as f:
            f.write(data)
        self._size += len(data)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shut_down:
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        line = (encode_otlp_json(spans, memo=self._memo) + "\n").encode()
        try:
            with self._lock:
                self._append(line)
        except OSError as exc:
            self._size = None  # stat again next time
            log.warning("span_file_write_failed", path=str(self.path), error=str(exc))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._shut_down = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
