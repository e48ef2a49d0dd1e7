"""``python -m edge.gateway``: the API gateway, configured by env (see ``edge.gateway.config``)."""

from __future__ import annotations

from edge.gateway.app import create_app
from edge.gateway.config import GatewayConfig
from observability.app import run


def main() -> None:
    config = GatewayConfig.from_env()
    run(create_app(config), config.process)


if __name__ == "__main__":
    main()
