"""The load balancer: an L7 reverse proxy over the gateway replicas (`python -m edge.balancer`)."""

from edge.balancer.app import create_app
from edge.balancer.config import BalancerConfig

__all__ = ["BalancerConfig", "create_app"]
