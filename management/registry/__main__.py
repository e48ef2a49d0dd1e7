"""``python -m management.registry``: the registry process."""

from __future__ import annotations

from management.registry.app import create_app
from management.registry.config import RegistryConfig
from observability.app import create_admin_app, run


def main() -> None:
    config = RegistryConfig.from_env()
    app = create_app(config)
    run(app, config.process, admin_app=create_admin_app(app))


if __name__ == "__main__":
    main()
