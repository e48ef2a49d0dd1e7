"""The service registry: instances register, heartbeat and deregister; clients watch by long-poll.

Run it as ``python -m management.registry``; its HTTP API is described in ``routes.py``. The
client side (``mesh.registry_client``, ``mesh.registration``,
``mesh.registry_discovery``) does not import this package.
"""

from management.registry.app import create_app
from management.registry.config import RegistryConfig

__all__ = ["RegistryConfig", "create_app"]
