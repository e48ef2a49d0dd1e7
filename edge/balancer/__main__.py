"""``python -m edge.balancer``: the load balancer, configured from the environment."""

from __future__ import annotations

from edge.balancer.app import create_app, create_balancer_admin_app
from edge.balancer.config import BalancerConfig
from observability.app import run


def main() -> None:
    config = BalancerConfig.from_env()
    app = create_app(config)
    admin = create_balancer_admin_app(app) if config.process.admin_port is not None else None
    run(app, config.process, admin_app=admin)


if __name__ == "__main__":
    main()
