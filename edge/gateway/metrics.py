"""The gateway's own metrics (prefix ``gateway_``), registered on the app's registry.

The shared RED metrics (``http_server_*``) and the RPC client's (``rpc_client_*``) come from
the process kit and ``mesh``; these add what only the gateway knows. Labels never carry an id
or an API key.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter


@dataclass(frozen=True)
class GatewayMetrics:
    """Counters of refusals, degraded answers and checkouts."""

    ratelimited: Counter
    auth_failures: Counter
    upstream_degraded: Counter
    upstream_errors: Counter
    checkouts: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry) -> GatewayMetrics:
        return cls(
            ratelimited=Counter(
                "gateway_ratelimited_total",
                "Requests refused with 429 because their API key was over its rate.",
                registry=registry,
            ),
            auth_failures=Counter(
                "gateway_auth_failures_total",
                "Requests refused with 401, by reason (missing or unknown key).",
                ["reason"],
                registry=registry,
            ),
            upstream_degraded=Counter(
                "gateway_upstream_degraded_total",
                "Answers given without an optional upstream's part (it failed or was too slow).",
                ["upstream"],
                registry=registry,
            ),
            upstream_errors=Counter(
                "gateway_upstream_errors_total",
                "Upstream RPC errors that became an error answer, by upstream and RPC code.",
                ["upstream", "code"],
                registry=registry,
            ),
            checkouts=Counter(
                "gateway_checkouts_total",
                "Checkouts answered, by resulting order status (or 'error').",
                ["status"],
                registry=registry,
            ),
        )
