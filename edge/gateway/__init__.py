"""The API gateway: the one public API (OpenAPI at /openapi.json), auth, rate limits, routing
to the services over RPC, aggregation with graceful degradation, and the storefront's origin."""

from edge.gateway.app import create_app
from edge.gateway.config import GatewayConfig

__all__ = ["GatewayConfig", "create_app"]
