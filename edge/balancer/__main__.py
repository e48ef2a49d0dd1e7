"""``python -m edge.balancer``: the load balancer, configured from the environment."""

from __future__ import annotations

from edge.balancer.app import create_app
from edge.balancer.config import BalancerConfig
from observability.app import run


def main() -> None:
    config = BalancerConfig.from_env()
    run(create_app(config), config.process)


if __name__ == "__main__":
    main()
