"""``configure_logging``: JSON lines off a terminal, stdlib logs in the same shape, levels."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from mesh.process import ProcessConfig
from observability.logs import configure_logging, get_logger, json_line, utc_timestamper


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_when_not_on_a_terminal(
    process: ProcessConfig, tracer_provider: TracerProvider
) -> None:
    stream = io.StringIO()  # not a tty: "auto" means JSON
    configure_logging(process, stream=stream)
    log = get_logger("tests.logs")
    with tracer_provider.get_tracer("t").start_as_current_span("work") as span:
        log.info("inside_span", answer=42)
        logging.getLogger("some.library").warning("stdlib %s", "message")
    log.info("outside_span")
    log.debug("too_detailed")

    inside, stdlib, outside = lines(stream)
    ctx = span.get_span_context()
    assert inside["event"] == "inside_span"
    assert inside["answer"] == 42
    assert inside["level"] == "info"
    assert inside["logger"] == "tests.logs"
    assert inside["service"] == "shop"
    assert inside["instance"] == "shop-1"
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")
    assert "timestamp" in inside
    assert stdlib["event"] == "stdlib message"
    assert stdlib["logger"] == "some.library"
    assert stdlib["trace_id"] == inside["trace_id"]
    assert outside["event"] == "outside_span"
    assert "trace_id" not in outside


@pytest.mark.usefixtures("restore_logging")
def test_level_and_exceptions(process: ProcessConfig) -> None:
    stream = io.StringIO()
    configure_logging(
        ProcessConfig(service="shop", instance_id="shop-1", log_level="debug"), stream=stream
    )
    log = get_logger("tests.logs")
    log.debug("detail")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    detail, failed = lines(stream)
    assert detail["level"] == "debug"
    assert failed["level"] == "error"
    assert "ValueError: bad" in failed["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_console_format_is_not_json(process: ProcessConfig) -> None:
    stream = io.StringIO()
    configure_logging(
        ProcessConfig(service="shop", instance_id="shop-1", log_format="console"), stream=stream
    )
    get_logger("tests.logs").info("hello_console", n=1)
    text = stream.getvalue()
    assert "hello_console" in text
    assert not text.lstrip().startswith("{")


def test_timestamps_have_structlogs_iso_utc_shape() -> None:
    stamp = utc_timestamper()
    event: dict[str, Any] = {}
    before = datetime.now(UTC)
    stamp(None, "info", event)
    after = datetime.now(UTC)
    value = event["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", value)
    assert before.replace(microsecond=0) <= datetime.fromisoformat(value) <= after


def test_json_lines_fall_back_for_what_orjson_refuses() -> None:
    assert json.loads(json_line({"big": 2**70, "n": 1})) == {"big": 2**70, "n": 1}
    assert json.loads(json_line({"obj": Opaque()})) == {"obj": "<opaque>"}
    assert json.loads(json_line({"event": "caf\u00e9"})) == {"event": "caf\u00e9"}


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"
