"""``python -m services.catalog``: read the config from the environment and serve."""

from observability.app import run
from services.catalog.app import create_app
from services.catalog.config import Config


def main() -> None:
    config = Config.from_env()
    run(create_app(config), config.process)


if __name__ == "__main__":
    main()
