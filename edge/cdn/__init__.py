"""CDN edge caches: one caching reverse proxy per region (``python -m edge.cdn``)."""

from edge.cdn.app import create_admin, create_app
from edge.cdn.config import CdnConfig

__all__ = ["CdnConfig", "create_admin", "create_app"]
