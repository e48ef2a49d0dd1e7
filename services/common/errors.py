"""Domain errors of the services, free of HTTP and RPC; handlers turn them into ``RpcError``.

Each carries the RPC code it maps to (``Code`` values of ``mesh.rpc``) and a message a person
can act on. Raising one inside a write transaction rolls it back, so a refused request writes
nothing.
"""

from __future__ import annotations

from mesh.errors import TestbedError


class DomainError(TestbedError):
    """A request the service refuses on purpose; ``code`` is the RPC code to answer with."""

    code = "unknown"
    reason: str | None = None
    """A finer cause callers may act on, sent as the RPC error's ``details.reason``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    code = "invalid_argument"


class IdempotencyKeyReused(InvalidArgument):
    """An idempotency key sent again with a different request (the gateway answers 422, as
    the IETF idempotency-key draft says)."""

    reason = "idempotency_key_reused"


class UnknownProduct(InvalidArgument):
    """An order naming a product the catalog does not have (the gateway answers 422: the
    request is well-formed, what it names does not exist)."""

    reason = "unknown_product"


class NotFound(DomainError):
    code = "not_found"


class AlreadyExists(DomainError):
    code = "already_exists"


class FailedPrecondition(DomainError):
    code = "failed_precondition"


class Unavailable(DomainError):
    code = "unavailable"
