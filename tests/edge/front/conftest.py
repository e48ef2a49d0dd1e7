"""The front's tests use the observability fixtures (a process, an in-memory span exporter,
log capture): the front records what the telemetry middleware records."""

from tests.observability.conftest import exporter, logs, process, registry, tracer_provider

__all__ = ["exporter", "logs", "process", "registry", "tracer_provider"]
