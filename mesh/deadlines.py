"""The deadline of the work in progress, carried in a context variable across hops.

The RPC server sets it from ``Connect-Timeout-Ms`` while a handler runs; ``RpcClient`` calls
made from that task inherit it and send what is left on to the next hop, so a callee never
works past its caller's deadline. Entry points that are not RPC handlers (the gateway's HTTP
handlers) open one with ``deadline_after``. Deadlines are ``time.monotonic()`` values.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

TIMEOUT_HEADER = "Connect-Timeout-Ms"

# The deadline (time.monotonic) of the request being handled in this task, if any.
_DEADLINE: ContextVar[float | None] = ContextVar("testbed_rpc_deadline", default=None)


def current_deadline() -> float | None:
    """The deadline (``time.monotonic()`` based) inherited by calls made from this task."""
    return _DEADLINE.get()


def remaining() -> float | None:
    """Seconds left before the current deadline (may be negative), or None."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


@contextmanager
def deadline_after(seconds: float | None) -> Iterator[float | None]:
    """Run the block under a deadline ``seconds`` from now (never later than the current one).

    For entry points that are not RPC handlers (e.g. the gateway's HTTP handlers): every
    ``RpcClient`` call inside the block inherits the deadline.
    """
    current = _DEADLINE.get()
    new = current
    if seconds is not None:
        candidate = time.monotonic() + seconds
        new = candidate if current is None else min(current, candidate)
    token = _DEADLINE.set(new)
    try:
        yield new
    finally:
        _DEADLINE.reset(token)


@contextmanager
def bound_to(deadline: float | None) -> Iterator[None]:
    """Run the block with exactly ``deadline`` as the current one (the RPC server uses this)."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)
