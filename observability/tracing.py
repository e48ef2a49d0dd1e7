"""Traces: an OpenTelemetry ``TracerProvider`` configured from the standard ``OTEL_*`` variables.

Variables read (once, into ``TracingConfig``):

``OTEL_SERVICE_NAME``                    service.name (default: the process's service)
``OTEL_TRACES_SAMPLER``                  ``always_on``, ``always_off``, ``traceidratio``,
                                         ``ratelimiting``, ``parentbased_always_on``,
                                         ``parentbased_always_off``, ``parentbased_traceidratio``,
                                         ``parentbased_ratelimiting`` (default)
``OTEL_TRACES_SAMPLER_ARG``              ratio for the ``*traceidratio`` samplers (default 1.0);
                                         new traces a second for ``*ratelimiting`` (default 100)
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``   full URL spans are POSTed to (used as is)
``OTEL_EXPORTER_OTLP_ENDPOINT``          base URL; ``/v1/traces`` is appended
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``
                                         only ``http/protobuf`` is supported
``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`` / ``OTEL_EXPORTER_OTLP_TIMEOUT``  export deadline, ms (10000)
``OTEL_SDK_DISABLED``                    ``true``: no spans are recorded or exported
``OTEL_BSP_SCHEDULE_DELAY``              batch delay, ms (default here 1000, not the SDK's 5000,
                                         so span files are nearly complete when a process is killed)
``TESTBED_SPAN_FILE_BYTES``              a span file is rotated before it grows past this
                                         (default 16777216, 16 MiB)
``TESTBED_SPAN_FILE_BACKUPS``            rotated span files kept per instance (default 3): at most
                                         (1 + backups) x bytes of spans per instance

The default samples every new trace up to 100 a second per process and follows the parent's
decision otherwise (``observability.sampling``): the experiments' loads are traced whole, and a
saturated process does not spend more on tracing as its load grows. ``parentbased_always_on``
traces every request whatever the load.

Spans to an OTLP endpoint go through the SDK's ``BatchSpanProcessor`` (its thread does the
network I/O); spans to the span file through ``LoopSpanProcessor``, which encodes and writes
them on the event loop (see ``observability.span_buffer`` for why).

With an endpoint, spans go there by OTLP/HTTP; without one, to
``<run_dir>/traces/<instance_id>.jsonl`` (see ``observability.otlp_json``).
Resource attributes: ``service.name``, ``service.instance.id``, ``service.version``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from mesh.errors import ConfigError
from mesh.process import ProcessConfig, env_int
from observability.otlp_json import (
    DEFAULT_SPAN_FILE_BACKUPS,
    DEFAULT_SPAN_FILE_BYTES,
    OtlpJsonLinesExporter,
    span_file_path,
)
from observability.sampling import ParentBasedRateLimiting, RateLimitingSampler
from observability.span_buffer import LoopSpanProcessor

__all__ = ["TracingConfig", "build_sampler", "build_tracer_provider", "tracer_name"]

EXPORT_BATCH = 64
"""Spans per export: small, because the export holds the GIL while it encodes (a batch of
512 spans held it ~5 ms, which a request arriving meanwhile waited out: the p99)."""
LOOP_BATCH = 16
"""Spans per span-file export on the event loop: a request arriving during one waits for it
(~10 us a span), so a smaller batch than the thread's keeps that wait short (the p99)."""
MAX_QUEUE = 4096
"""Spans waiting for export, at most (more are dropped)."""

tracer_name = "testbed"
"""Instrumentation scope name of the spans the testbed creates."""

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "ratelimiting",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
    "parentbased_ratelimiting",
)
DEFAULT_SAMPLER = "parentbased_ratelimiting"
DEFAULT_TRACES_PER_SECOND = 100.0
"""New traces a second each process records by default (``*ratelimiting`` samplers)."""


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True, kw_only=True)
class TracingConfig:
    """Tracing settings, read once from the environment."""

    service_name: str
    instance_id: str
    service_version: str
    run_dir: Path
    sampler: str = DEFAULT_SAMPLER
    sampler_arg: float = DEFAULT_TRACES_PER_SECOND
    endpoint: str | None = None
    """Full OTLP/HTTP traces URL, or None to write span files."""
    export_timeout_s: float = 10.0
    schedule_delay_ms: float = 1000.0
    disabled: bool = False
    span_files: bool = True
    """With an ``endpoint``, also write span files to the run folder (``TESTBED_SPAN_FILES``)."""
    span_file_bytes: int = DEFAULT_SPAN_FILE_BYTES
    span_file_backups: int = DEFAULT_SPAN_FILE_BACKUPS

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(
                f"OTEL_TRACES_SAMPLER={self.sampler!r} is unknown; use one of {', '.join(SAMPLERS)}"
            )
        if "traceidratio" in self.sampler and not 0.0 <= self.sampler_arg <= 1.0:
            raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG={self.sampler_arg} is not in [0, 1]")
        if "ratelimiting" in self.sampler and self.sampler_arg < 0.0:
            raise ConfigError(
                f"OTEL_TRACES_SAMPLER_ARG={self.sampler_arg} is negative; "
                "give new traces per second (e.g. 100)"
            )

    @property
    def span_file(self) -> Path:
        return span_file_path(self.run_dir, self.instance_id)

    @classmethod
    def from_env(
        cls, process: ProcessConfig, env: Mapping[str, str] | None = None
    ) -> TracingConfig:
        e = os.environ if env is None else env
        protocol = (
            e.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or e.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        ).strip()
        if protocol != "http/protobuf":
            raise ConfigError(
                f"OTLP protocol {protocol!r} is not supported; use http/protobuf "
                "(OTEL_EXPORTER_OTLP_PROTOCOL)"
            )
        endpoint = (e.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or "").strip() or None
        if endpoint is None:
            base = (e.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()
            if base:
                endpoint = base.rstrip("/") + "/v1/traces"
        timeout_ms = _float(
            e,
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
            if e.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            else "OTEL_EXPORTER_OTLP_TIMEOUT",
            10000.0,
        )
        sampler = (e.get("OTEL_TRACES_SAMPLER") or DEFAULT_SAMPLER).strip().lower()
        default_arg = DEFAULT_TRACES_PER_SECOND if "ratelimiting" in sampler else 1.0
        return cls(
            service_name=(e.get("OTEL_SERVICE_NAME") or "").strip() or process.service,
            instance_id=process.instance_id,
            service_version=process.version,
            run_dir=process.run_dir,
            sampler=sampler,
            sampler_arg=_float(e, "OTEL_TRACES_SAMPLER_ARG", default_arg),
            endpoint=endpoint,
            export_timeout_s=timeout_ms / 1000.0,
            schedule_delay_ms=_float(e, "OTEL_BSP_SCHEDULE_DELAY", 1000.0),
            disabled=(e.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true",
            span_files=(e.get("TESTBED_SPAN_FILES") or "1").strip().lower()
            not in ("0", "false", "no"),
            span_file_bytes=env_int(
                e, "TESTBED_SPAN_FILE_BYTES", DEFAULT_SPAN_FILE_BYTES, minimum=4096
            ),
            span_file_backups=env_int(
                e, "TESTBED_SPAN_FILE_BACKUPS", DEFAULT_SPAN_FILE_BACKUPS, minimum=0
            ),
        )


def build_sampler(name: str, arg: float = 1.0) -> Sampler:
    """The SDK sampler for an ``OTEL_TRACES_SAMPLER`` value."""
    root: Sampler
    base = name.removeprefix("parentbased_")
    if base == "always_on":
        root = ALWAYS_ON
    elif base == "always_off":
        root = ALWAYS_OFF
    elif base == "traceidratio":
        root = TraceIdRatioBased(arg)
    elif base == "ratelimiting":
        if name.startswith("parentbased_"):
            return ParentBasedRateLimiting(arg)
        root = RateLimitingSampler(arg)
    else:
        raise ConfigError(f"OTEL_TRACES_SAMPLER={name!r} is unknown")
    return ParentBased(root) if name.startswith("parentbased_") else root


def build_resource(config: TracingConfig) -> Resource:
    return Resource.create(
        {
            "service.name": config.service_name,
            "service.instance.id": config.instance_id,
            "service.version": config.service_version,
        }
    )


def span_file_exporter(config: TracingConfig) -> OtlpJsonLinesExporter:
    """The exporter of this process's span file (rotated and bounded as configured)."""
    return OtlpJsonLinesExporter(
        config.span_file, max_bytes=config.span_file_bytes, backups=config.span_file_backups
    )


def build_exporter(config: TracingConfig) -> SpanExporter:
    if config.endpoint is not None:
        return OTLPSpanExporter(endpoint=config.endpoint, timeout=config.export_timeout_s)
    return span_file_exporter(config)


def build_tracer_provider(
    process: ProcessConfig,
    *,
    env: Mapping[str, str] | None = None,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """A provider configured from ``OTEL_*`` (``env`` defaults to ``os.environ``).

    ``exporter`` overrides where spans go (tests pass an in-memory exporter). The caller owns
    the provider and calls ``shutdown()`` at exit, which flushes pending spans.
    """
    config = TracingConfig.from_env(process, env)
    provider = TracerProvider(
        sampler=ALWAYS_OFF
        if config.disabled
        else build_sampler(config.sampler, config.sampler_arg),
        resource=build_resource(config),
    )
    if config.disabled:
        return provider
    exporters = [exporter if exporter is not None else build_exporter(config)]
    # With a collector, spans also go to the run folder (unless TESTBED_SPAN_FILES=0): the run
    # keeps its traces after the collector is gone, and the chaos engine's fault localisation
    # and `testbed traces` read them from there.
    if exporter is None and config.endpoint is not None and config.span_files:
        exporters.append(span_file_exporter(config))
    for each in exporters:
        processor: SpanProcessor
        if isinstance(each, OtlpJsonLinesExporter):
            processor = LoopSpanProcessor(
                each,
                max_queue_size=MAX_QUEUE,
                batch_size=LOOP_BATCH,
                schedule_delay_s=config.schedule_delay_ms / 1000.0,
            )
        else:
            processor = BatchSpanProcessor(
                each,
                max_queue_size=MAX_QUEUE,
                max_export_batch_size=EXPORT_BATCH,
                schedule_delay_millis=config.schedule_delay_ms,
                export_timeout_millis=config.export_timeout_s * 1000.0,
            )
        provider.add_span_processor(processor)
    return provider
