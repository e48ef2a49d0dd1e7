"""Structured logs: structlog, JSON when not on a terminal, trace and span ids on every line.

``configure_logging(process)`` is called once by ``observability.app.run``; structlog's own
events and the standard library's ``logging`` records (aiohttp, OpenTelemetry) go through the
same processors and renderer to the same stream, so every line a process writes has one
shape::

    {"event": "request", "level": "info", "timestamp": "...", "service": "orders",
     "instance": "orders-1", "logger": "observability.http", "trace_id": "...", "span_id": "..."}

``trace_id``/``span_id`` come from the current OpenTelemetry span (a processor reads the
context var), so any line logged while a request is being handled carries them. Tests capture
logs with ``structlog.testing.LogCapture`` appended to ``log_processors(process)`` rather than
parsing text.

The hot path (one canonical line per request) is structlog's fast configuration: a
level-filtering bound logger (a call below the level returns at once, before any processor
runs) writing rendered lines straight to the stream, not through the ``logging`` module's
record, handler and formatter machinery; loggers are bound once and cached when a process
runs (``cache_loggers=True``, as ``run`` does), since binding on every call costs as much as
rendering.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

import orjson
import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

from mesh.process import ProcessConfig

__all__ = [
    "add_trace_context",
    "configure_logging",
    "get_logger",
    "json_line",
    "log_processors",
    "utc_timestamper",
]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def get_logger(name: str | None = None, **initial_values: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger; ``name`` (default: the calling module's) is the ``logger`` field."""
    if name is None:
        name = sys._getframe(1).f_globals.get("__name__", "unknown")
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name, **initial_values)
    return logger


def add_trace_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Add ``trace_id`` and ``span_id`` (lowercase hex) of the current span, if there is one.

    A line that carries both already (the canonical request line passes its span's) skips
    the context lookup.
    """
    if "trace_id" in event_dict and "span_id" in event_dict:
        return event_dict
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        if "trace_id" not in event_dict:
            event_dict["trace_id"] = f"{ctx.trace_id:032x}"
        if "span_id" not in event_dict:
            event_dict["span_id"] = f"{ctx.span_id:016x}"
    return event_dict


def _add_process(process: ProcessConfig) -> Processor:
    service, instance = process.service, process.instance_id

    def add_process(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        if "service" not in event_dict:
            event_dict["service"] = service
        if "instance" not in event_dict:
            event_dict["instance"] = instance
        return event_dict

    return add_process


def utc_timestamper() -> Processor:
    """Adds ``timestamp``: ISO 8601 in UTC with microseconds, as structlog's
    ``TimeStamper(fmt="iso", utc=True)`` writes it (``2026-01-31T12:00:00.123456Z``), with the
    date and time of day formatted once per second rather than on every line."""
    last_second = -1
    prefix = ""

    def add_timestamp(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        nonlocal last_second, prefix
        now_us = time.time_ns() // 1000
        second, micros = divmod(now_us, 1_000_000)
        if second != last_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            last_second = second
        # datetime.isoformat leaves out a zero fraction; so does this.
        event_dict["timestamp"] = f"{prefix}.{micros:06d}Z" if micros else f"{prefix}Z"
        return event_dict

    return add_timestamp


def log_processors(process: ProcessConfig) -> list[Processor]:
    """The processors every line goes through, before rendering (also used by tests)."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        utc_timestamper(),
        _add_process(process),
        add_trace_context,
    ]


class NamedWriteLogger(structlog.WriteLogger):
    """structlog's ``WriteLogger`` (write and flush one line under the stream's lock), with the
    ``name`` that ``add_logger_name`` reads."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class NamedWriteLoggerFactory:
    """Makes ``NamedWriteLogger``s on one stream; the argument is the logger's name."""

    def __init__(self, file: TextIO) -> None:
        self.file = file

    def __call__(self, *args: Any) -> NamedWriteLogger:
        name = args[0] if args and isinstance(args[0], str) else "unknown"
        return NamedWriteLogger(self.file, name)


def json_line(obj: Any, **_kw: Any) -> str:
    """Serialise one event for structlog's ``JSONRenderer``: orjson (several times faster than
    ``json.dumps``, and UTF-8 as is), falling back to ``json`` for what orjson refuses
    (integers past 64 bits, non-string keys)."""
    try:
        return orjson.dumps(obj, default=_fallback).decode()
    except TypeError:
        return json.dumps(obj, default=_fallback)


def _fallback(obj: object) -> object:
    """Values JSON has no type for, as structlog's renderer writes them."""
    custom = getattr(obj, "__structlog__", None)
    return custom() if callable(custom) else repr(obj)


def configure_logging(
    process: ProcessConfig, *, stream: TextIO | None = None, cache_loggers: bool = False
) -> None:
    """Route structlog and stdlib logging to ``stream`` (default stderr) with one renderer.

    Logging configuration is process-wide by nature (the ``logging`` module and structlog keep
    it globally); this is the one place that sets it, called once at process start.
    ``cache_loggers`` binds each logger once, on first use, to this configuration: right for
    a process (``run`` sets it), wrong for tests that configure logging several times.
    """
    out = sys.stderr if stream is None else stream
    use_json = process.log_format == "json" or (process.log_format == "auto" and not out.isatty())
    level = _LEVELS.get(process.log_level, logging.INFO)
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=json_line)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    shared = log_processors(process)
    structlog.configure(
        processors=[
            *shared,
            *([structlog.processors.format_exc_info] if use_json else []),
            renderer,
        ],
        logger_factory=NamedWriteLoggerFactory(out),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=cache_loggers,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The canonical request line replaces aiohttp's access log.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _identity(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    return event_dict
