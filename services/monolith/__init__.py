"""The monolith baseline: the five services' code in one process (see ``app``)."""

from services.monolith.app import create_app
from services.monolith.config import Config

__all__ = ["Config", "create_app"]
