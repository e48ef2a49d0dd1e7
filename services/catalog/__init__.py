"""catalog: products and prices, cacheable reads (``python -m services.catalog``)."""

from services.catalog.app import create_app
from services.catalog.config import Config

__all__ = ["Config", "create_app"]
