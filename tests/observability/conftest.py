"""Observability test fixtures: a process config, an in-memory span exporter, log capture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from structlog.testing import LogCapture

from mesh.process import ProcessConfig
from observability.logs import log_processors
from observability.tracing import TracingConfig, build_resource


@pytest.fixture
def process(tmp_path: Path) -> ProcessConfig:
    return ProcessConfig(service="shop", instance_id="shop-1", version="v7", run_dir=tmp_path)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(
    process: ProcessConfig, exporter: InMemorySpanExporter
) -> Iterator[TracerProvider]:
    config = TracingConfig.from_env(process, {})
    provider = TracerProvider(resource=build_resource(config))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def logs(process: ProcessConfig) -> Iterator[LogCapture]:
    """Every structlog event, after the real processors (trace ids included), as dicts."""
    capture = LogCapture()
    structlog.configure(
        processors=[*log_processors(process), capture],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    try:
        yield capture
    finally:
        structlog.reset_defaults()
