"""Jaeger v2's configuration: in-memory storage, OTLP in, the query API out.

One builder serves the embedded stack (loopback ports from the plan) and the compose files
(container ports on every interface).
"""

from __future__ import annotations

from typing import Any

__all__ = ["jaeger_config"]


def jaeger_config(
    *,
    host: str,
    ui: int,
    otlp_grpc: int,
    otlp_http: int,
    query_grpc: int | None = None,
    self_tracing: bool = True,
    ui_assets: str | None = None,
) -> dict[str, Any]:
    """The collector configuration, as data (dump it as YAML).

    ``self_tracing=False`` stops Jaeger tracing its own queries to an OTLP collector on :4317
    (on a laptop there is none, and Jaeger then waits for it when stopped); ``query_grpc``
    moves the query service's gRPC port off its default; ``ui_assets`` is the folder of a
    jaeger-ui build (``jaeger_query.ui.assets_path``) to serve instead of the placeholder page.
    """
    query: dict[str, Any] = {}
    if not self_tracing:
        query["enable_tracing"] = False
    query["storage"] = {"traces": "memstore"}
    query["http"] = {"endpoint": f"{host}:{ui}"}
    if ui_assets:
        query["ui"] = {"assets_path": ui_assets}
    if query_grpc is not None:
        query["grpc"] = {"endpoint": f"{host}:{query_grpc}"}
    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
        },
        "extensions": {
            "jaeger_query": query,
            "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 50000}}}},
        },
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"{host}:{otlp_grpc}"},
                    "http": {"endpoint": f"{host}:{otlp_http}"},
                }
            }
        },
        "processors": {"batch": {}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }
