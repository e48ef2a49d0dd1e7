"""The RPC layer against the echo app on a real socket: wire format, codes, bad input, tracing."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from mesh.resilience import profile_named
from mesh.rpc import HTTP_STATUS, Code, RpcError, deadline_after
from tests.mesh.conftest import MakeClient, sample
from tests.support.echo import (
    SERVICE,
    CounterResponse,
    EchoRequest,
    EchoResponse,
    Empty,
    FailRequest,
    IncrementRequest,
    SleepRequest,
    SleepResponse,
    StatsResponse,
)


def address(server: TestServer) -> str:
    return f"127.0.0.1:{server.port}"


async def post(
    session: aiohttp.ClientSession,
    server: TestServer,
    method: str,
    body: bytes | str,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with session.post(
        f"http://{address(server)}/{SERVICE}/{method}", data=body, headers=hdrs
    ) as resp:
        return resp.status, await resp.json()


async def test_unary_call_returns_typed_answer_and_deadline(
    echo_server: TestServer, make_client: MakeClient
) -> None:
    client = make_client([address(echo_server)], profile_named("basic"))
    answer = await client.call(f"{SERVICE}/Echo", EchoRequest(text="hi"), EchoResponse, timeout=1.5)
    assert answer.text == "hi"
    assert answer.instance == "echo-1"
    assert answer.deadline_ms is not None
    assert 0 < answer.deadline_ms <= 1500


async def test_none_profile_sends_no_deadline(
    echo_server: TestServer, make_client: MakeClient
) -> None:
    client = make_client([address(echo_server)], profile_named("none"))
    answer = await client.call(f"{SERVICE}/Echo", {"text": "x"}, EchoResponse)
    assert answer.deadline_ms is None


async def test_inherited_deadline_caps_the_call_timeout(
    echo_server: TestServer, make_client: MakeClient
) -> None:
    client = make_client([address(echo_server)], profile_named("basic"))
    with deadline_after(0.8):
        answer = await client.call(f"{SERVICE}/Echo", EchoRequest(), EchoResponse, timeout=5.0)
    assert answer.deadline_ms is not None
    assert 0 < answer.deadline_ms <= 800


@pytest.mark.parametrize("code", list(Code))
async def test_error_codes_round_trip(
    code: Code,
    echo_server: TestServer,
    make_client: MakeClient,
    session: aiohttp.ClientSession,
) -> None:
    client = make_client([address(echo_server)], profile_named("basic"))
    with pytest.raises(RpcError) as caught:
        await client.call(f"{SERVICE}/Fail", FailRequest(code=code, message=f"boom {code}"), Empty)
    assert caught.value.code is code
    assert caught.value.message == f"boom {code}"
    assert caught.value.trace_id is not None
    assert len(caught.value.trace_id) == 32
    status, body = await post(session, echo_server, "Fail", f'{{"code": "{code.value}"}}')
    assert status == HTTP_STATUS[code]
    assert body["code"] == code.value


async def test_malformed_body_is_invalid_argument(
    echo_server: TestServer, session: aiohttp.ClientSession
) -> None:
    status, body = await post(session, echo_server, "Sleep", b'{"ms": 5')
    assert (status, body["code"]) == (400, "invalid_argument")
    assert "not valid JSON" in body["message"]
    assert body["trace_id"]

    status, body = await post(session, echo_server, "Sleep", b"[1, 2]")
    assert (status, body["code"]) == (400, "invalid_argument")
    assert "JSON object" in body["message"]


async def test_invalid_field_is_named(
    echo_server: TestServer, session: aiohttp.ClientSession
) -> None:
    status, body = await post(session, echo_server, "Sleep", b'{"ms": "soon"}')
    assert (status, body["code"]) == (400, "invalid_argument")
    assert "'ms'" in body["message"]
    status, body = await post(session, echo_server, "Sleep", b'{"ms": -1}')
    assert "'ms'" in body["message"]
    assert "greater than or equal to 0" in body["message"]


async def test_unknown_method_is_unimplemented(
    echo_server: TestServer, session: aiohttp.ClientSession, make_client: MakeClient
) -> None:
    status, body = await post(session, echo_server, "Nope", b"{}")
    assert (status, body["code"]) == (501, "unimplemented")
    assert "'Nope'" in body["message"]
    assert "Echo" in body["message"]  # lists the methods that exist
    client = make_client([address(echo_server)], profile_named("full"))
    with pytest.raises(RpcError) as caught:
        await client.call(f"{SERVICE}/Nope", {}, Empty, idempotent=True)
    assert caught.value.code is Code.UNIMPLEMENTED


async def test_expired_deadline_is_rejected_without_running_the_handler(
    echo_server: TestServer, session: aiohttp.ClientSession, make_client: MakeClient
) -> None:
    status, body = await post(
        session, echo_server, "Sleep", b'{"ms": 1}', {"Connect-Timeout-Ms": "0"}
    )
    assert (status, body["code"]) == (504, "deadline_exceeded")
    assert "expired before arrival" in body["message"]
    client = make_client([address(echo_server)], profile_named("basic"))
    stats = await client.call(f"{SERVICE}/Stats", Empty(), StatsResponse)
    assert stats.sleeps_started == 0


async def test_malformed_timeout_header_is_invalid_argument(
    echo_server: TestServer, session: aiohttp.ClientSession
) -> None:
    for raw in ("soon", "-5", "12345678901"):
        status, body = await post(session, echo_server, "Echo", b"{}", {"Connect-Timeout-Ms": raw})
        assert (status, body["code"]) == (400, "invalid_argument"), raw
        assert "Connect-Timeout-Ms" in body["message"]


async def test_handler_deadline_expiry(echo_server: TestServer, make_client: MakeClient) -> None:
    client = make_client([address(echo_server)], profile_named("basic"))
    with pytest.raises(RpcError) as caught:
        await client.call(f"{SERVICE}/Sleep", SleepRequest(ms=5000), SleepResponse, timeout=0.2)
    assert caught.value.code is Code.DEADLINE_EXCEEDED
    stats = await client.call(f"{SERVICE}/Stats", Empty(), StatsResponse)
    assert (stats.sleeps_started, stats.sleeps_completed) == (1, 0)


async def test_get_for_idempotent_methods_only(
    echo_server: TestServer, session: aiohttp.ClientSession
) -> None:
    base = f"http://{address(echo_server)}/{SERVICE}"
    async with session.get(f"{base}/Echo", params={"message": '{"text": "g"}'}) as resp:
        assert resp.status == 200
        assert (await resp.json())["text"] == "g"
    async with session.get(f"{base}/Increment", params={"message": "{}"}) as resp:
        body = await resp.json()
        assert (resp.status, body["code"]) == (501, "unimplemented")
        assert "POST" in body["message"]


async def test_unsupported_content_type(
    echo_server: TestServer, session: aiohttp.ClientSession
) -> None:
    status, body = await post(
        session, echo_server, "Echo", b"text=x", {"Content-Type": "text/plain"}
    )
    assert (status, body["code"]) == (400, "invalid_argument")
    assert "application/json" in body["message"]


async def test_idempotent_retry_applies_the_effect_once(
    echo_server: TestServer, make_client: MakeClient, registry: CollectorRegistry
) -> None:
    client = make_client([address(echo_server)], profile_named("full"))
    answer = await client.call(
        f"{SERVICE}/Increment",
        IncrementRequest(amount=5, fail_after_apply=True),
        CounterResponse,
        idempotency_key="order-1:charge",
    )
    assert answer.value == 5
    stats = await client.call(f"{SERVICE}/Stats", Empty(), StatsResponse)
    assert stats.effects_applied == 1
    assert sample(registry, "rpc_client_retries_total", upstream="up", method="Increment") == 1

    # Without an idempotency key the same lost answer is not retried: one effect, one error.
    with pytest.raises(RpcError) as caught:
        await client.call(
            f"{SERVICE}/Increment",
            IncrementRequest(amount=1, fail_after_apply=True),
            CounterResponse,
        )
    assert caught.value.code is Code.UNAVAILABLE
    counter = await client.call(f"{SERVICE}/Counter", Empty(), CounterResponse)
    assert counter.value == 6
    assert sample(registry, "rpc_client_retries_total", upstream="up", method="Increment") == 1


async def test_client_metrics(
    echo_server: TestServer, make_client: MakeClient, registry: CollectorRegistry
) -> None:
    client = make_client([address(echo_server)], profile_named("basic"))
    await client.call(f"{SERVICE}/Echo", EchoRequest(), EchoResponse)
    with pytest.raises(RpcError):
        await client.call(f"{SERVICE}/Fail", FailRequest(code=Code.NOT_FOUND), Empty)
    assert sample(registry, "rpc_client_calls_total", upstream="up", method="Echo", code="ok") == 1
    assert (
        sample(registry, "rpc_client_calls_total", upstream="up", method="Fail", code="not_found")
        == 1
    )
    assert sample(registry, "rpc_client_duration_seconds_count", upstream="up", method="Echo") == 1
    assert sample(registry, "rpc_client_breaker_state", upstream="up") == 0


async def test_client_span_and_trace_context_propagation(
    echo_server: TestServer, make_client: MakeClient, exporter: InMemorySpanExporter
) -> None:
    client = make_client([address(echo_server)], profile_named("basic"))
    await client.call(f"{SERVICE}/Echo", EchoRequest(), EchoResponse)
    spans = exporter.get_finished_spans()
    client_span = next(s for s in spans if s.kind is SpanKind.CLIENT)
    server_span = next(s for s in spans if s.kind is SpanKind.SERVER)
    attrs = client_span.attributes or {}
    assert attrs["rpc.system"] == "connect_rpc"
    assert attrs["rpc.service"] == SERVICE
    assert attrs["rpc.method"] == "Echo"
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == echo_server.port
    assert "error.type" not in attrs
    # The server span (observability middleware) continues the client's trace.
    assert server_span.parent is not None
    assert server_span.parent.span_id == client_span.context.span_id
    assert server_span.context.trace_id == client_span.context.trace_id


async def test_failed_attempt_span_has_error_type(
    echo_server: TestServer, make_client: MakeClient, exporter: InMemorySpanExporter
) -> None:
    client = make_client([address(echo_server)], profile_named("basic"))
    with pytest.raises(RpcError) as caught:
        await client.call(f"{SERVICE}/Fail", FailRequest(code=Code.INTERNAL), Empty)
    client_span = next(s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT)
    assert (client_span.attributes or {})["error.type"] == "internal"
    assert caught.value.trace_id == format(client_span.context.trace_id, "032x")


async def test_none_profile_ignores_inherited_deadlines(
    echo_server: TestServer, make_client: MakeClient
) -> None:
    client = make_client([address(echo_server)], profile_named("none"))
    with deadline_after(0.5):
        answer = await client.call(f"{SERVICE}/Echo", EchoRequest(), EchoResponse)
    assert answer.deadline_ms is None


async def test_clients_share_the_metrics_of_one_registry(
    echo_server: TestServer, make_client: MakeClient, registry: CollectorRegistry
) -> None:
    first = make_client([address(echo_server)], profile_named("full"), service="a")
    second = make_client([address(echo_server)], profile_named("full"), service="b")
    await first.call(f"{SERVICE}/Echo", EchoRequest(), EchoResponse)
    await second.call(f"{SERVICE}/Echo", EchoRequest(), EchoResponse)
    for upstream in ("a", "b"):
        assert (
            sample(registry, "rpc_client_calls_total", upstream=upstream, method="Echo", code="ok")
            == 1
        )
        assert sample(registry, "rpc_client_breaker_state", upstream=upstream) == 0
