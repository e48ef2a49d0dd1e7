"""``python -m services.monolith``: read the config from the environment and serve."""

from observability.app import run
from services.common.runtime import create_service_admin_app
from services.monolith.app import create_app
from services.monolith.config import Config


def main() -> None:
    config = Config.from_env()
    app = create_app(config)
    admin = create_service_admin_app(app) if config.process.admin_port is not None else None
    run(app, config.process, admin_app=admin)


if __name__ == "__main__":
    main()
