"""Gateway pieces that need no network: config parsing, token buckets, images, the document."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edge.gateway.config import GatewayConfig, parse_api_keys
from edge.gateway.images import image_path, product_svg
from edge.gateway.models import CheckoutRequest
from edge.gateway.openapi import build_openapi
from edge.gateway.problems import validation_problem
from edge.gateway.ratelimit import RateLimiter
from mesh.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_api_keys_parse_with_rates() -> None:
    keys = parse_api_keys("demo-key:50:100, other:0.5:2")
    assert [(k.key, k.rate, k.burst) for k in keys] == [("demo-key", 50.0, 100), ("other", 0.5, 2)]


@pytest.mark.parametrize(
    "raw", ["", "k:1", "k:x:1", "k:1:0", "k:-1:3", ":1:1", "a:1:1,a:2:2", "k:1:1.5"]
)
def test_bad_api_keys_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_API_KEYS"):
        parse_api_keys(raw)


def test_config_from_env_defaults_and_storefront_key() -> None:
    config = GatewayConfig.from_env({"TESTBED_PORT": "8080"})
    assert [k.key for k in config.api_keys] == ["demo-key"]
    assert config.storefront_key == "demo-key"
    assert config.process.service == "gateway"
    config = GatewayConfig.from_env(
        {"GATEWAY_API_KEYS": "a:1:1,b:2:2", "GATEWAY_RECOMMENDATIONS_BUDGET_MS": "100"}
    )
    assert config.storefront_key == "a"
    assert config.recommendations_budget == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="GATEWAY_STOREFRONT_KEY"):
        GatewayConfig.from_env({"GATEWAY_API_KEYS": "a:1:1", "GATEWAY_STOREFRONT_KEY": "zzz"})
    with pytest.raises(ConfigError, match="GATEWAY_MAX_BODY_BYTES"):
        GatewayConfig.from_env({"GATEWAY_MAX_BODY_BYTES": "-4"})


def test_token_bucket_allows_burst_then_refuses_with_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    results = [limiter.check("k", rate=2.0, burst=3).allowed for _ in range(4)]
    assert results == [True, True, True, False]
    refused = limiter.check("k", rate=2.0, burst=3)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.check("k", rate=2.0, burst=3).allowed
    assert not limiter.check("k", rate=2.0, burst=3).allowed
    clock.now += 60  # refills to the burst, never beyond
    assert [limiter.check("k", rate=2.0, burst=3).allowed for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]


def test_token_buckets_are_per_key_and_the_table_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(max_keys=2, clock=clock)
    assert limiter.check("a", rate=1, burst=1).allowed
    assert not limiter.check("a", rate=1, burst=1).allowed
    assert limiter.check("b", rate=1, burst=1).allowed  # b has its own bucket
    for i in range(100):
        limiter.check(f"k{i}", rate=1, burst=1)
    assert len(limiter) == 2


def test_product_images_are_deterministic_svg_and_escape_the_id() -> None:
    assert product_svg("p-001") == product_svg("p-001")
    assert product_svg("p-001") != product_svg("p-002")
    svg = product_svg("a<b&c").decode()
    assert svg.startswith("<svg")
    assert svg.endswith("</svg>")
    assert "a<b" not in svg
    assert "a&lt;b&amp;c" in svg
    assert image_path("p-1") == "/images/v1/products/p-1.svg"


def test_checkout_validation_names_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        CheckoutRequest.model_validate({"items": [{"product_id": "p-1", "quantity": 0}]})
    problem = validation_problem(info.value)
    assert problem.status == 400
    assert "items.0.quantity" in problem.detail
    # A product on two lines is well-formed (the schema cannot say otherwise): the handler
    # refuses it with 422, not the validation's 400.
    repeated = CheckoutRequest.model_validate(
        {"items": [{"product_id": "p-1", "quantity": 1}, {"product_id": "p-1", "quantity": 2}]}
    )
    assert repeated.repeated_product() == "p-1"
    single = CheckoutRequest.model_validate({"items": [{"product_id": "p-1", "quantity": 1}]})
    assert single.repeated_product() is None
    with pytest.raises(ValidationError):  # strict: true is not a quantity
        CheckoutRequest.model_validate({"items": [{"product_id": "p-1", "quantity": True}]})
    for not_whole in ("2", 2.5):
        with pytest.raises(ValidationError):
            CheckoutRequest.model_validate(
                {"items": [{"product_id": "p-1", "quantity": not_whole}]}
            )
    # JSON Schema's integer: 2.0 is one.
    whole = CheckoutRequest.model_validate({"items": [{"product_id": "p-1", "quantity": 2.0}]})
    assert whole.items[0].quantity == 2


def test_openapi_document_is_built_from_the_models() -> None:
    doc = build_openapi()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    assert schemas["CheckoutItem"]["properties"]["quantity"]["maximum"] == 100
    assert set(schemas["Order"]["properties"]["status"]["$ref"].split("/")[-1:]) == {"OrderStatus"}
    assert schemas["OrderStatus"]["enum"] == ["pending", "confirmed", "failed"]
    checkout = doc["paths"]["/api/checkout"]["post"]
    assert checkout["parameters"][0]["name"] == "Idempotency-Key"
    assert checkout["parameters"][0]["required"] is True
    assert {"400", "401", "413", "429"} <= set(checkout["responses"])
    assert doc["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
    # every $ref points at a schema that exists
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    refs.append(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
