"""One error shape at the edge: whatever a client gets from a PoP, the balancer or the gateway
when it fails is ``application/problem+json`` (RFC 9457) with the trace id; the services keep
the RPC shape among themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from edge.balancer import BalancerConfig
from edge.balancer import create_app as create_balancer
from edge.cdn import CdnConfig
from edge.cdn import create_app as create_pop
from mesh.discovery import StaticDiscovery
from mesh.process import ProcessConfig
from observability.app import FAULTS_KEY, create_base_app
from observability.errors import PROBLEM_ERRORS, PROBLEM_TYPE_PREFIX
from observability.faults import ErrorFault
from tests.edge.support_gateway import DEMO_KEY, gateway_app
from tests.edge.support_proxy import Upstream

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application | TestServer], Awaitable[Client]]


@pytest.fixture
async def origin() -> AsyncIterator[Upstream]:
    up = await Upstream("origin").start()
    yield up
    await up.stop()


def _pop(origin_url: str) -> web.Application:
    config = CdnConfig(
        process=ProcessConfig(service="cdn-us", instance_id="pop-us"), origin_url=origin_url
    )
    return create_pop(config, registry=CollectorRegistry(), tracer_provider=TracerProvider())


def _balancer(addresses: list[str]) -> web.Application:
    config = BalancerConfig(process=ProcessConfig(service="balancer", instance_id="lb-1"))
    return create_balancer(
        config,
        discovery=StaticDiscovery({"gateway": addresses}),
        registry=CollectorRegistry(),
        tracer_provider=TracerProvider(),
    )


async def _problem(resp: Any, status: int, slug: str) -> dict[str, Any]:
    assert resp.status == status
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json(content_type=None)
    assert body["type"] == PROBLEM_TYPE_PREFIX + slug
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["trace_id"]
    assert set(body) <= {"type", "title", "status", "detail", "trace_id", "errors"}
    return body


async def test_a_pop_forwards_every_path_even_odd_ones(
    aiohttp_client: ClientFactory, origin: Upstream
) -> None:
    # A newline once unquoted: the PoP's router must not answer 404 in its own shape.
    client = await aiohttp_client(_pop(origin.url))
    async with client.get("/cached/a%0Ab?cc=max-age=60") as resp:
        assert resp.status == 200
        assert resp.headers["X-Cache"] == "MISS"
    assert origin.state.hits["a\nb"] == 1


async def test_injected_faults_answer_problem_json_at_every_edge_hop(
    aiohttp_client: ClientFactory, origin: Upstream, tmp_path: Path
) -> None:
    apps = {
        "pop": _pop(origin.url),
        "balancer": _balancer([origin.address]),
        "gateway": gateway_app(tmp_path, GATEWAY_API_KEYS=f"{DEMO_KEY}:100:100"),
    }
    for name, app in apps.items():
        client = await aiohttp_client(app)
        app[FAULTS_KEY].set(ErrorFault(rate=1.0, status=503))
        async with client.get("/api/products", headers={"X-API-Key": DEMO_KEY}) as resp:
            body = await _problem(resp, 503, "unavailable")
            assert resp.headers["Cache-Control"] == "no-store", name
        assert body["title"] == "Service Unavailable"


async def test_the_balancer_without_instances_answers_problem_json(
    aiohttp_client: ClientFactory,
) -> None:
    client = await aiohttp_client(_balancer([]))
    async with client.get("/anything") as resp:
        await _problem(resp, 502, "unavailable")


async def test_an_unhandled_error_at_the_edge_is_a_problem_and_in_a_service_the_rpc_shape(
    aiohttp_client: ClientFactory,
) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    for shape in ("problem", "rpc"):
        process = ProcessConfig(service="s", instance_id="s-1")
        kwargs: dict[str, Any] = {}
        if shape == "problem":
            kwargs["error_shape"] = PROBLEM_ERRORS
        app = create_base_app(
            process, registry=CollectorRegistry(), tracer_provider=TracerProvider(), **kwargs
        )
        app.router.add_get("/broken", broken)
        client = await aiohttp_client(app)
        async with client.get("/broken") as resp:
            text = await resp.text()
            assert "secret" not in text
            if shape == "problem":
                await _problem(resp, 500, "internal")
            else:
                assert resp.content_type == "application/json"
                assert (await resp.json())["code"] == "internal"
        async with client.get("/nowhere") as resp:
            if shape == "problem":
                await _problem(resp, 404, "not-found")
            else:
                assert (await resp.json())["code"] == "not_found"
