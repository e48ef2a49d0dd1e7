"""What every process emits: structured logs, Prometheus metrics, OpenTelemetry traces, health."""
