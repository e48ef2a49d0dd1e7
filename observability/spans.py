"""Read the span files of a run folder into simple typed records.

``load_spans(run_dir)`` reads every ``<run_dir>/traces/*.jsonl`` (OTLP/JSON lines, as written
by ``observability.otlp_json`` or the OpenTelemetry Collector's file exporter) and returns
``SpanRecord``s; the chaos engine and the tests analyse traces with them. A line that cannot be
parsed (a process killed mid-write leaves at most one) is skipped, and counted in
``SpanFileStats`` when asked for.

Written by hand because the OTLP/JSON schema is small and fixed, and parsing dicts directly
also accepts the collector's variants (enum names instead of integers, hex or base64 ids).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

__all__ = [
    "AttrValue",
    "SpanEvent",
    "SpanFileStats",
    "SpanKind",
    "SpanRecord",
    "SpanStatus",
    "by_trace",
    "children_of",
    "load_spans",
    "parse_line",
    "read_span_file",
    "roots",
    "span_files",
]

AttrValue = str | bool | int | float | tuple[Any, ...] | None


class SpanKind(IntEnum):
    """OTLP span kinds (the integers of the proto enum)."""

    UNSPECIFIED = 0
    INTERNAL = 1
    SERVER = 2
    CLIENT = 3
    PRODUCER = 4
    CONSUMER = 5


class SpanStatus(IntEnum):
    UNSET = 0
    OK = 1
    ERROR = 2


@dataclass(frozen=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: Mapping[str, AttrValue]


@dataclass(frozen=True)
class SpanRecord:
    """One span, with the resource it came from flattened in."""

    trace_id: str
    """32 lowercase hex digits."""
    span_id: str
    """16 lowercase hex digits."""
    parent_span_id: str | None
    name: str
    kind: SpanKind
    service: str
    instance_id: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, AttrValue]
    status: SpanStatus
    status_message: str = ""
    events: tuple[SpanEvent, ...] = ()
    resource: Mapping[str, AttrValue] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def is_error(self) -> bool:
        return self.status is SpanStatus.ERROR

    @property
    def is_root(self) -> bool:
        return self.parent_span_id is None


@dataclass
class SpanFileStats:
    files: int = 0
    lines: int = 0
    bad_lines: int = 0
    spans: int = 0


def _hex_id(raw: Any, length: int) -> str | None:
    """An id as lowercase hex; accepts hex (OTLP/JSON) and base64 (plain proto3 JSON)."""
    if not isinstance(raw, str) or not raw:
        return None
    text = raw.lower()
    if len(text) == length and all(c in "0123456789abcdef" for c in text):
        return None if set(text) == {"0"} else text
    try:
        decoded = base64.b64decode(raw, validate=True).hex()
    except (binascii.Error, ValueError):
        raise ValueError(f"id {raw!r} is neither hex nor base64") from None
    if len(decoded) != length:
        raise ValueError(f"id {raw!r} has the wrong length")
    return None if set(decoded) == {"0"} else decoded


def _any_value(value: Mapping[str, Any]) -> AttrValue:
    if "stringValue" in value:
        return str(value["stringValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return tuple(_any_value(v) for v in value["arrayValue"].get("values", []))
    if "kvlistValue" in value:
        return tuple(
            (kv.get("key", ""), _any_value(kv.get("value", {})))
            for kv in value["kvlistValue"].get("values", [])
        )
    if "bytesValue" in value:
        return str(value["bytesValue"])
    return None


def _attributes(raw: Iterable[Mapping[str, Any]] | None) -> dict[str, AttrValue]:
    return {kv["key"]: _any_value(kv.get("value", {})) for kv in raw or () if "key" in kv}


def _enum(raw: Any, enum: type[SpanKind] | type[SpanStatus], prefix: str) -> int:
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        if raw.isdigit():
            return int(raw)
        return int(enum[raw.removeprefix(prefix)])
    return 0


def _spans_of_request(request: Mapping[str, Any]) -> Iterator[SpanRecord]:
    for resource_spans in request.get("resourceSpans", []):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes"))
        service = str(resource.get("service.name") or "unknown")
        instance = str(resource.get("service.instance.id") or "")
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                status = span.get("status", {})
                trace_id = _hex_id(span.get("traceId"), 32)
                span_id = _hex_id(span.get("spanId"), 16)
                if trace_id is None or span_id is None:
                    raise ValueError("span without traceId or spanId")
                yield SpanRecord(
                    trace_id=trace_id,
                    span_id=span_id,
                    parent_span_id=_hex_id(span.get("parentSpanId"), 16),
                    name=str(span.get("name", "")),
                    kind=SpanKind(_enum(span.get("kind"), SpanKind, "SPAN_KIND_")),
                    service=service,
                    instance_id=instance,
                    start_ns=int(span.get("startTimeUnixNano", 0)),
                    end_ns=int(span.get("endTimeUnixNano", 0)),
                    attributes=_attributes(span.get("attributes")),
                    status=SpanStatus(_enum(status.get("code"), SpanStatus, "STATUS_CODE_")),
                    status_message=str(status.get("message", "")),
                    events=tuple(
                        SpanEvent(
                            name=str(ev.get("name", "")),
                            time_ns=int(ev.get("timeUnixNano", 0)),
                            attributes=_attributes(ev.get("attributes")),
                        )
                        for ev in span.get("events", [])
                    ),
                    resource=resource,
                )


def parse_line(line: str) -> list[SpanRecord]:
    """The spans of one OTLP/JSON line (one ExportTraceServiceRequest); raises ValueError."""
    try:
        request = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ValueError("not a JSON object")
    try:
        return list(_spans_of_request(request))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not an OTLP/JSON trace request: {exc!r}") from None


def read_span_file(path: Path, stats: SpanFileStats | None = None) -> list[SpanRecord]:
    """Every span in one ``.jsonl`` file; unparseable lines are skipped (and counted)."""
    stats = stats if stats is not None else SpanFileStats()
    stats.files += 1
    spans: list[SpanRecord] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            stats.lines += 1
            try:
                spans.extend(parse_line(line))
            except ValueError:
                stats.bad_lines += 1
    stats.spans += len(spans)
    return spans


def span_files(traces_dir: Path) -> list[Path]:
    """Every span file in ``traces_dir``: each instance's current ``<instance>.jsonl`` and
    its rotated ``<instance>~<k>.jsonl`` (``observability.otlp_json``), sorted by name."""
    return sorted(traces_dir.glob("*.jsonl"))


def load_spans(run_dir: Path, stats: SpanFileStats | None = None) -> list[SpanRecord]:
    """Every span of a run folder (``<run_dir>/traces/*.jsonl``, the rotated files
    ``<instance>~<k>.jsonl`` included), ordered by start time."""
    spans: list[SpanRecord] = []
    for path in span_files(run_dir / "traces"):  # rotated ones too
        try:
            spans.extend(read_span_file(path, stats))
        except FileNotFoundError:  # rotated away (renamed or deleted) since it was listed
            continue
    spans.sort(key=lambda s: (s.start_ns, s.end_ns))
    return spans


def by_trace(spans: Iterable[SpanRecord]) -> dict[str, list[SpanRecord]]:
    """Spans grouped by trace id (each group in the input's order)."""
    traces: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        traces[span.trace_id].append(span)
    return dict(traces)


def children_of(span: SpanRecord, spans: Sequence[SpanRecord]) -> list[SpanRecord]:
    return [s for s in spans if s.trace_id == span.trace_id and s.parent_span_id == span.span_id]


def roots(spans: Sequence[SpanRecord]) -> list[SpanRecord]:
    """Spans whose parent is absent from ``spans`` (true roots and orphans)."""
    present = {(s.trace_id, s.span_id) for s in spans}
    return [
        s
        for s in spans
        if s.parent_span_id is None or (s.trace_id, s.parent_span_id) not in present
    ]
