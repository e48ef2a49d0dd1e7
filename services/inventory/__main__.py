"""``python -m services.inventory``: read the config from the environment and serve."""

from observability.app import run
from services.inventory.app import create_app
from services.inventory.config import Config


def main() -> None:
    config = Config.from_env()
    run(create_app(config), config.process)


if __name__ == "__main__":
    main()
