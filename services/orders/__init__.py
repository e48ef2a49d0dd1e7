"""orders: PlaceOrder runs the checkout saga (``python -m services.orders``)."""

from services.orders.app import create_app
from services.orders.config import Config

__all__ = ["Config", "create_app"]
