"""The testbed's exception hierarchy, written down in one place.

``TestbedError`` is the root of every error the testbed raises on purpose. The RPC layer's
``RpcError`` (in ``mesh.rpc``) derives from it too.
"""

from __future__ import annotations


class TestbedError(Exception):
    """Base of every error the testbed raises deliberately (never a bug)."""

    __test__ = False  # not a pytest test class


class ConfigError(TestbedError):
    """A setting is missing or malformed; the message names it and the fix."""
