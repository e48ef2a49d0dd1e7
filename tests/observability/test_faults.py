"""The fault admin API and what faults do to requests (and never to health and metrics)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientTimeout, web
from aiohttp.test_utils import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from mesh.process import ProcessConfig
from observability.app import create_admin_app, create_base_app
from observability.faults import ErrorFault, FaultInputError, parse_fault

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]
TOKEN = {"X-Admin-Token": "s3cret"}


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": "world"})


@pytest.fixture
async def clients(
    aiohttp_client: ClientFactory,
    tmp_path: Any,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
) -> tuple[Client, Client]:
    process = ProcessConfig(
        service="shop", instance_id="shop-1", run_dir=tmp_path, admin_token="s3cret"
    )
    app = create_base_app(process, registry=registry, tracer_provider=tracer_provider)
    app.router.add_get("/hello", hello)
    app.router.add_get("/other", hello)
    public = await aiohttp_client(app)
    admin = await aiohttp_client(create_admin_app(app))
    return public, admin


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> bool:
    """Poll ``check`` until it is true (True) or ``within`` seconds passed (False)."""
    deadline = time.monotonic() + within
    while True:
        if await check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


async def put_fault(admin: Client, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await admin.put(f"/faults/{kind}", json=body, headers=TOKEN)
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def active_kinds(admin: Client) -> list[str]:
    resp = await admin.get("/faults", headers=TOKEN)
    assert resp.status == 200
    return [f["kind"] for f in (await resp.json())["faults"]]


@pytest.mark.parametrize("headers", [{}, {"X-Admin-Token": "wrong"}, {"X-Admin-Token": ""}])
async def test_admin_api_requires_the_token(
    clients: tuple[Client, Client], headers: dict[str, str]
) -> None:
    _, admin = clients
    for method, path in (("GET", "/faults"), ("PUT", "/faults/error"), ("DELETE", "/faults")):
        resp = await admin.request(method, path, headers=headers, json={"rate": 1.0})
        assert resp.status == 401
        assert (await resp.json())["code"] == "unauthenticated"
    assert await active_kinds(admin) == []


async def test_error_fault_fails_requests_but_not_health_or_metrics(
    clients: tuple[Client, Client], registry: CollectorRegistry
) -> None:
    public, admin = clients
    await put_fault(admin, "error", {"rate": 1.0})
    assert registry.get_sample_value("testbed_faults_active", {"kind": "error"}) == 1

    for _ in range(5):
        resp = await public.get("/hello")
        assert resp.status == 500
        body = await resp.json()
        assert body["code"] == "internal"
        assert len(body["trace_id"]) == 32
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await public.get(path)).status == 200
    assert registry.get_sample_value("testbed_faults_injected_total", {"kind": "error"}) == 5
    assert (
        registry.get_sample_value(
            "http_server_requests_total", {"method": "GET", "route": "/hello", "code": "500"}
        )
        == 5
    )

    resp = await admin.delete("/faults", headers=TOKEN)
    assert await resp.json() == {"cleared": 1}
    assert (await public.get("/hello")).status == 200
    assert registry.get_sample_value("testbed_faults_active", {"kind": "error"}) == 0
    assert await active_kinds(admin) == []


async def test_error_fault_with_rpc_code_or_status_and_routes(
    clients: tuple[Client, Client], exporter: InMemorySpanExporter
) -> None:
    public, admin = clients
    await put_fault(admin, "error", {"code": "unavailable", "routes": ["/hello"]})
    resp = await public.get("/hello")
    assert resp.status == 503
    assert (await resp.json())["code"] == "unavailable"
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {})["testbed.fault"] == "error"
    assert dict(span.attributes or {})["error.type"] == "503"
    assert (await public.get("/other")).status == 200  # not a targeted route

    await put_fault(admin, "error", {"status": 429, "message": "slow down"})  # replaces
    resp = await public.get("/other")
    assert resp.status == 429
    body = await resp.json()
    assert body["code"] == "resource_exhausted"
    assert body["message"] == "slow down"


async def test_error_rate_is_a_probability(clients: tuple[Client, Client]) -> None:
    public, admin = clients
    await put_fault(admin, "error", {"rate": 0.5})
    statuses = [(await public.get("/hello")).status for _ in range(100)]
    failed = statuses.count(500)
    assert failed + statuses.count(200) == 100
    assert 15 < failed < 85  # binomial(100, 0.5): outside this about once in 10^11


async def test_latency_fault_delays_requests(
    clients: tuple[Client, Client], registry: CollectorRegistry
) -> None:
    public, admin = clients
    await put_fault(admin, "latency", {"fixed_ms": 200, "jitter_ms": 50})
    started = time.monotonic()
    assert (await public.get("/hello")).status == 200
    assert time.monotonic() - started >= 0.2
    slow_sum = registry.get_sample_value(
        "http_server_request_duration_seconds_sum", {"method": "GET", "route": "/hello"}
    )
    assert slow_sum is not None
    assert slow_sum >= 0.2  # the metrics see what the client saw

    started = time.monotonic()
    assert (await public.get("/healthz")).status == 200
    health_sum = registry.get_sample_value(
        "http_server_request_duration_seconds_sum", {"method": "GET", "route": "/healthz"}
    )
    assert health_sum is not None
    assert health_sum < 0.2

    resp = await admin.delete("/faults/latency", headers=TOKEN)
    assert await resp.json() == {"cleared": 1}
    resp = await admin.delete("/faults/latency", headers=TOKEN)
    assert await resp.json() == {"cleared": 0}


async def test_fault_with_duration_switches_itself_off(clients: tuple[Client, Client]) -> None:
    public, admin = clients
    answer = await put_fault(admin, "error", {"duration_s": 0.3})
    assert 0 < answer["fault"]["expires_in_s"] <= 0.3
    assert (await public.get("/hello")).status == 500

    async def none_active() -> bool:
        return await active_kinds(admin) == []

    assert await eventually(none_active)
    assert (await public.get("/hello")).status == 200


async def test_hang_holds_requests_until_cleared(clients: tuple[Client, Client]) -> None:
    public, admin = clients
    await put_fault(admin, "hang", {"routes": ["/hello"]})
    pending = asyncio.create_task(public.get("/hello"))
    await asyncio.sleep(0.3)
    assert not pending.done()
    assert (await public.get("/healthz")).status == 200
    assert (await public.get("/other")).status == 200

    await admin.delete("/faults/hang", headers=TOKEN)
    resp = await asyncio.wait_for(pending, 10)
    assert resp.status == 200


async def test_hang_ends_when_the_client_gives_up(
    clients: tuple[Client, Client], registry: CollectorRegistry
) -> None:
    public, admin = clients
    await put_fault(admin, "hang", {})
    with pytest.raises(asyncio.TimeoutError):
        await public.get("/hello", timeout=ClientTimeout(total=0.3))
    labels = {"method": "GET", "route": "/hello", "code": "499"}
    deadline = time.monotonic() + 10
    while registry.get_sample_value("http_server_requests_total", labels) is None:
        assert time.monotonic() < deadline, "the hung handler never noticed the client left"
        await asyncio.sleep(0.05)
    assert registry.get_sample_value("http_server_requests_in_flight") == 0


def _cpu_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "testbed-cpu-fault"]


async def test_cpu_fault_burns_cpu_in_a_thread_and_stops(clients: tuple[Client, Client]) -> None:
    public, admin = clients
    await put_fault(admin, "cpu", {"share": 0.8})
    (burner,) = _cpu_threads()
    assert burner.ident is not None
    burner_clock = time.pthread_getcpuclockid(burner.ident)
    await asyncio.sleep(0.5)
    for _ in range(5):  # the loop stays responsive
        assert (await public.get("/healthz")).status == 200
    assert time.clock_gettime(burner_clock) > 0.05  # CPU seconds burnt by that thread alone

    await admin.delete("/faults/cpu", headers=TOKEN)

    async def no_burner() -> bool:
        return _cpu_threads() == []

    assert await eventually(no_burner)


async def test_memory_fault_grows_to_its_cap_and_frees(clients: tuple[Client, Client]) -> None:
    _, admin = clients
    await put_fault(admin, "memory", {"mb_per_s": 40, "max_mb": 6})
    deadline = time.monotonic() + 10
    held = 0.0
    while time.monotonic() < deadline:
        resp = await admin.get("/faults", headers=TOKEN)
        (fault,) = (await resp.json())["faults"]
        held = fault["held_mb"]
        assert held <= 6
        if held == 6:
            break
        await asyncio.sleep(0.05)
    assert held == 6
    await admin.delete("/faults", headers=TOKEN)
    assert await active_kinds(admin) == []


@pytest.mark.parametrize(
    ("kind", "body", "reason"),
    [
        ("error", {"rate": 1.5}, "rate: Input should be less than or equal to 1"),
        ("error", {"rate": "0.5"}, "rate: Input should be a valid number"),
        ("error", {"status": 200}, "status: Input should be greater than or equal to 400"),
        ("error", {"code": "oops"}, "code: Input should be"),
        ("error", {"colour": "red"}, "colour: Extra inputs are not permitted"),
        ("error", {"routes": ["orders"]}, "must be a route template"),
        ("latency", {}, "fixed_ms or jitter_ms must be above 0"),
        ("latency", {"fixed_ms": -1}, "fixed_ms: Input should be greater than or equal to 0"),
        ("cpu", {}, "share: Field required"),
        ("cpu", {"share": 2}, "share: Input should be less than or equal to 1"),
        ("memory", {"mb_per_s": 10, "max_mb": 100000}, "max_mb: Input should be less than"),
        ("hang", {"duration_s": 0}, "duration_s: Input should be greater than 0"),
        ("hang", [], "the body must be a JSON object"),
        ("hang", {"kind": "error"}, "does not match"),
    ],
)
async def test_bad_fault_bodies_get_400_with_the_reason(
    clients: tuple[Client, Client], kind: str, body: Any, reason: str
) -> None:
    _, admin = clients
    resp = await admin.put(f"/faults/{kind}", json=body, headers=TOKEN)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["code"] == "invalid_argument"
    assert reason in answer["message"]
    assert await active_kinds(admin) == []


async def test_unknown_kind_and_broken_json(clients: tuple[Client, Client]) -> None:
    _, admin = clients
    resp = await admin.put("/faults/flood", json={}, headers=TOKEN)
    assert resp.status == 404
    assert "use one of error, latency, hang, cpu, memory" in (await resp.json())["message"]
    resp = await admin.put("/faults/error", data=b"{rate:", headers=TOKEN)
    assert resp.status == 400
    assert (await resp.json())["message"] == "the body is not valid JSON"


def test_parse_fault_fills_status_from_code_and_code_from_status() -> None:
    spec = parse_fault("error", {"code": "deadline_exceeded"})
    assert isinstance(spec, ErrorFault)
    assert (spec.status, spec.code) == (504, "deadline_exceeded")
    spec = parse_fault("error", {"status": 503})
    assert isinstance(spec, ErrorFault)
    assert spec.code == "unavailable"
    with pytest.raises(FaultInputError, match="unknown fault kind"):
        parse_fault("smoke", {})
