"""``python -m services.recommendations``: read the config from the environment and serve."""

from observability.app import run
from services.recommendations.app import create_app
from services.recommendations.config import Config


def main() -> None:
    config = Config.from_env()
    run(create_app(config), config.process)


if __name__ == "__main__":
    main()
