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


class NoInstanceError(TestbedError):
    """No instance of an upstream service can take a request (none known, or all excluded)."""


class CircuitOpenError(TestbedError):
    """The circuit breaker of an upstream is open (or its half-open trial slots are taken)."""


class BulkheadFullError(TestbedError):
    """The concurrency limit towards an upstream is reached; the call was not sent."""
