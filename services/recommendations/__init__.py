"""recommendations: "people also bought", non-critical (``python -m services.recommendations``)."""

from services.recommendations.app import create_app
from services.recommendations.config import Config

__all__ = ["Config", "create_app"]
