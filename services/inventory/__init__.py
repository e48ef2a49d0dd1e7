"""inventory: stock and reservations (``python -m services.inventory``)."""

from services.inventory.app import create_app
from services.inventory.config import Config

__all__ = ["Config", "create_app"]
