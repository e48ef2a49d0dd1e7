"""Structured logs: structlog, JSON when not on a terminal, trace and span ids on every line.

``configure_logging(process)`` is called once by ``observability.app.run``; it routes both
structlog and the standard library's ``logging`` (aiohttp, OpenTelemetry) through the same
processor chain, so every line a process writes has one shape::

    {"event": "request", "level": "info", "timestamp": "...", "service": "orders",
     "instance": "orders-1", "logger": "observability.http", "trace_id": "...", "span_id": "..."}

``trace_id``/``span_id`` come from the current OpenTelemetry span (a processor reads the
context var), so any line logged while a request is being handled carries them. Tests capture
logs with ``structlog.testing.LogCapture`` appended to ``log_processors(process)`` rather than
parsing text.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

from mesh.process import ProcessConfig

__all__ = ["add_trace_context", "configure_logging", "get_logger", "log_processors"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def get_logger(name: str | None = None, **initial_values: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger; ``name`` shows up as the ``logger`` field."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial_values)
    return logger


def add_trace_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Add ``trace_id`` and ``span_id`` (lowercase hex) of the current span, if there is one."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", trace.format_trace_id(ctx.trace_id))
        event_dict.setdefault("span_id", trace.format_span_id(ctx.span_id))
    return event_dict


def _add_process(process: ProcessConfig) -> Processor:
    def add_process(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", process.service)
        event_dict.setdefault("instance", process.instance_id)
        return event_dict

    return add_process


def log_processors(process: ProcessConfig) -> list[Processor]:
    """The processors every line goes through, before rendering (also used by tests)."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_process(process),
        add_trace_context,
    ]


def configure_logging(process: ProcessConfig, *, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to ``stream`` (default stderr) with one renderer.

    Logging configuration is process-wide by nature (the ``logging`` module and structlog keep
    it globally); this is the one place that sets it, called once at process start.
    """
    out = sys.stderr if stream is None else stream
    use_json = process.log_format == "json" or (process.log_format == "auto" and not out.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    shared = log_processors(process)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # so tests and a later reconfigure take effect
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
    root.setLevel(_LEVELS.get(process.log_level, logging.INFO))
    # The canonical request line replaces aiohttp's access log.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _identity(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    return event_dict
