"""The public API's OpenAPI 3.1 document, built from the pydantic models the handlers validate with.

Schemas come from :mod:`edge.gateway.models` through pydantic's JSON Schema generator (request
bodies in validation mode, answers in serialization mode), and the query parameters of the
product list from ``ProductListQuery``'s fields, so the document cannot drift from what the
gateway accepts and answers. The paths are written here, on one screen.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from edge.gateway.auth import API_KEY_HEADER
from edge.gateway.inputs import IDEMPOTENCY_HEADER
from edge.gateway.models import (
    IDEMPOTENCY_KEY_PATTERN,
    CheckoutRequest,
    Order,
    Problem,
    ProductDetail,
    ProductList,
    ProductListQuery,
)
from edge.gateway.problems import PROBLEM_CONTENT_TYPE
from services.common.types import ID_PATTERN

REF = "#/components/schemas/{model}"

_PROBLEM_TEXT = {
    400: "Invalid request: the detail and `errors` name the field.",
    401: "Missing or unknown API key.",
    404: "No such resource.",
    409: "Conflicts with the current state (e.g. not enough stock).",
    413: "Request body too large.",
    415: "Request body is not JSON.",
    422: (
        f"Well-formed but not processable: the {IDEMPOTENCY_HEADER} was already used for a "
        "different order (send that order again, or use a new key), a product is unknown, "
        "or a product appears on two lines."
    ),
    429: "Over this API key's rate; retry after `Retry-After` seconds.",
    500: "The gateway failed (no detail is given away).",
    502: "An upstream service failed.",
    503: "An upstream service is unavailable or overloaded; retry after `Retry-After` seconds.",
    504: "An upstream service did not answer in time.",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


def _problems(*statuses: int) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for status in (*statuses, 401, 429, 500, 502, 503, 504):
        answer: dict[str, Any] = {
            "description": _PROBLEM_TEXT[status],
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": REF.format(model="Problem")}}},
        }
        if status in (429, 503):
            answer["headers"] = _RETRY_AFTER
        answers[str(status)] = answer
    return answers


def _ok(model: type[BaseModel], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}},
        **extra,
    }


def _id_param(what: str) -> dict[str, Any]:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "description": f"The {what}'s id.",
        "schema": {"type": "string", "pattern": ID_PATTERN},
    }


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        prop.pop("title", None)
        # Absent is how a client says "none"; the JSON null of an optional field has no
        # query-string spelling.
        if "anyOf" in prop:
            options = [o for o in prop.pop("anyOf") if o.get("type") != "null"]
            prop.update(options[0])
            prop.pop("default", None)
        params.append({"name": name, "in": "query", "required": False, "schema": prop})
    return params


def build_openapi(*, server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the public API."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (ProductList, "serialization"),
        (ProductDetail, "serialization"),
        (CheckoutRequest, "validation"),
        (Order, "serialization"),
        (Problem, "serialization"),
    ]
    _, top = models_json_schema(models, ref_template=REF)
    cache_headers = {
        "Cache-Control": {
            "description": "How long caches may keep it.",
            "schema": {"type": "string"},
        },
        "ETag": {"description": "Validator for If-None-Match.", "schema": {"type": "string"}},
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Testbed shop API",
            "version": "1.0.0",
            "description": (
                "The one public API of the testbed's shop, served by the API gateway. "
                f"Every /api/ call needs an API key in header {API_KEY_HEADER}; each key has a "
                "rate limit (token bucket). Errors are application/problem+json (RFC 9457) "
                "with the trace id of the failed request."
            ),
        },
        "security": [{"ApiKey": []}],
        "paths": {
            "/api/products": {
                "get": {
                    "operationId": "listProducts",
                    "summary": "List products (cacheable; answers 304 to If-None-Match).",
                    "parameters": _query_params(ProductListQuery),
                    "responses": {
                        "200": _ok(ProductList, "One page of products.", headers=cache_headers),
                        "304": {"description": "Not modified since the ETag given."},
                        **_problems(400),
                    },
                }
            },
            "/api/products/{id}": {
                "get": {
                    "operationId": "getProduct",
                    "summary": "A product with its availability and recommendations.",
                    "description": (
                        "Gathers catalog, inventory and recommendations in parallel. When an "
                        "optional part fails or is too slow, the answer comes without it: the "
                        "part is null and named in `degraded`."
                    ),
                    "parameters": [_id_param("product")],
                    "responses": {
                        "200": _ok(ProductDetail, "The product."),
                        **_problems(400, 404),
                    },
                }
            },
            "/api/checkout": {
                "post": {
                    "operationId": "checkout",
                    "summary": "Place an order.",
                    "description": (
                        f"Header {IDEMPOTENCY_HEADER} is required: the same key again answers "
                        "the same order and charges once, so a checkout is safe to retry; the "
                        "same key with a different order is refused (422)."
                    ),
                    "parameters": [
                        {
                            "name": IDEMPOTENCY_HEADER,
                            "in": "header",
                            "required": True,
                            "description": "A unique value per order (a UUID), reused on retry.",
                            "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": REF.format(model="CheckoutRequest")}
                            }
                        },
                    },
                    "responses": {
                        "200": _ok(Order, "The order and its status."),
                        **_problems(400, 404, 409, 413, 415, 422),
                    },
                }
            },
            "/api/orders/{id}": {
                "get": {
                    "operationId": "getOrder",
                    "summary": "An order's status.",
                    "parameters": [_id_param("order")],
                    "responses": {
                        "200": _ok(Order, "The order."),
                        **_problems(400, 404),
                    },
                }
            },
        },
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}
            },
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document


def openapi_bytes() -> bytes:
    """The document serialised once, as served."""
    return json.dumps(build_openapi(), indent=1, sort_keys=False).encode()
