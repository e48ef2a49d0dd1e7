"""``python -m edge.cdn``: one CDN PoP, configured from the environment."""

from __future__ import annotations

from edge.cdn.app import create_admin, create_app
from edge.cdn.config import CdnConfig
from observability.app import run


def main() -> None:
    config = CdnConfig.from_env()
    app = create_app(config)
    run(app, config.process, admin_app=create_admin(app))


if __name__ == "__main__":
    main()
