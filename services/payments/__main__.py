"""``python -m services.payments``: read the config from the environment and serve."""

from observability.app import run
from services.payments.app import create_admin, create_app
from services.payments.config import Config


def main() -> None:
    config = Config.from_env()
    app = create_app(config)
    admin = create_admin(app) if config.process.admin_port is not None else None
    run(app, config.process, admin_app=admin)


if __name__ == "__main__":
    main()
