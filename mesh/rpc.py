"""Unary RPC between testbed processes: Connect-style JSON over HTTP POST, client and server.

Wire format (the unary JSON conventions of the Connect protocol, https://connectrpc.com/docs/protocol):

* ``POST /<package>.<Service>/<Method>`` with ``Content-Type: application/json`` and the request
  message as a JSON object; idempotent methods also answer ``GET ...?message=<json>``.
* The deadline travels as ``Connect-Timeout-Ms`` (milliseconds left). The server runs the handler
  under it and puts it in a context variable, so every ``RpcClient`` call made while handling
  the request shrinks its own deadline to what is left: a callee never works past its caller.
* Success: HTTP 200 and the response message as JSON. Failure: the HTTP status of the Connect
  code and ``{"code": "...", "message": "...", "trace_id": "..."}``.
* Mutating calls may carry an ``Idempotency-Key`` header; only calls that are idempotent or
  carry such a key are retried (plus calls that never reached the server: connect failures).

Server: ``RpcService("testbed.orders.v1.OrderService")`` and ``@svc.method("PlaceOrder")`` on
``async def handler(req: Model, ctx: CallContext) -> OtherModel``; ``svc.add_routes(app)``.

Client: one ``RpcClient`` per (caller, upstream service) applies a ``ResilienceProfile``:
deadline, bulkhead, circuit breaker, balancing with outlier ejection, and retries (tenacity,
exponential backoff with full jitter) limited by a retry budget. It records the
``rpc_client_*`` metrics and one OpenTelemetry CLIENT span per attempt, injecting W3C trace
context into the request.

We hand-write this thin layer instead of using ``connect-python``: that project generates code
from protobuf schemas, while the testbed's messages are pydantic models and the transport must
be the aiohttp session each process already owns.

This module is the public face; the code lives in ``mesh.codes`` (codes, ``RpcError``),
``mesh.deadlines`` (the deadline context), ``mesh.server`` and ``mesh.client``.
"""

from __future__ import annotations

from mesh.client import RpcClient, RpcClientMetrics, new_idempotency_key
from mesh.codes import HTTP_STATUS, UPSTREAM_FAILURE_CODES, Code, RpcError, code_from_http_status
from mesh.deadlines import TIMEOUT_HEADER, current_deadline, deadline_after, remaining
from mesh.server import IDEMPOTENCY_HEADER, CallContext, RpcService, error_response

__all__ = [
    "HTTP_STATUS",
    "IDEMPOTENCY_HEADER",
    "TIMEOUT_HEADER",
    "UPSTREAM_FAILURE_CODES",
    "CallContext",
    "Code",
    "RpcClient",
    "RpcClientMetrics",
    "RpcError",
    "RpcService",
    "code_from_http_status",
    "current_deadline",
    "deadline_after",
    "error_response",
    "new_idempotency_key",
    "remaining",
]
