"""The in-process transport: an RpcClient calling an RpcService method directly keeps the
deadline, idempotency key, error codes, retries and spans of a call over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from mesh.deadlines import current_deadline
from mesh.discovery import Instance
from mesh.local import LocalDiscovery, LocalEndpoint
from mesh.process import ProcessConfig
from mesh.resilience import profile_for
from mesh.rpc import CallContext, Code, RpcClient, RpcError, RpcService

COUNT_KEY = web.AppKey("count", list[str])


class Ask(BaseModel):
    what: str
    sleep: float = 0.0


class Answer(BaseModel):
    echo: str
    key: str | None
    deadline_left: float | None


def _service() -> RpcService:
    svc = RpcService("testbed.demo.v1.DemoService")

    @svc.method("Echo")
    async def echo(req: Ask, ctx: CallContext) -> Answer:
        ctx.app[COUNT_KEY].append(req.what)
        if req.what == "missing":
            raise RpcError(Code.NOT_FOUND, "no such thing")
        if req.what == "busy":
            raise RpcError(Code.UNAVAILABLE, "try again")
        await asyncio.sleep(req.sleep)
        inherited = current_deadline()
        left = None if inherited is None else inherited - time.monotonic()
        ctx.response_headers["X-Seen"] = "yes"
        return Answer(echo=req.what, key=ctx.idempotency_key, deadline_left=left)

    return svc


@pytest.fixture
async def setup() -> AsyncIterator[tuple[RpcClient, web.Application, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    state = web.Application()
    state[COUNT_KEY] = []
    instance = Instance(id="demo@127.0.0.1:1", address="127.0.0.1:1")
    endpoint = LocalEndpoint("demo", _service(), state, instance)
    process = ProcessConfig(service="caller", instance_id="caller-1")
    async with aiohttp.ClientSession() as session:  # never used: no socket is opened
        client = RpcClient(
            session,
            LocalDiscovery({"demo": instance}),
            "demo",
            profile=profile_for(process, "demo"),
            registry=CollectorRegistry(),
            tracer_provider=provider,
            caller="caller",
            local=endpoint,
        )
        yield client, state, exporter


async def test_local_call_answers_with_key_headers_and_deadline(
    setup: tuple[RpcClient, web.Application, InMemorySpanExporter],
) -> None:
    client, state, exporter = setup
    answer, headers = await client.call_with_headers(
        "testbed.demo.v1.DemoService/Echo",
        Ask(what="hi"),
        Answer,
        timeout=2.0,
        idempotency_key="key-1",
    )
    assert answer.echo == "hi"
    assert answer.key == "key-1"
    assert answer.deadline_left is not None
    assert 0 < answer.deadline_left <= 2.0
    assert headers["X-Seen"] == "yes"
    assert state[COUNT_KEY] == ["hi"]
    spans = exporter.get_finished_spans()
    kinds = {s.kind for s in spans}
    assert kinds == {SpanKind.CLIENT, SpanKind.SERVER}
    server = next(s for s in spans if s.kind is SpanKind.SERVER)
    client_span = next(s for s in spans if s.kind is SpanKind.CLIENT)
    assert server.parent is not None
    assert server.parent.span_id == client_span.context.span_id
    assert client_span.attributes is not None
    assert client_span.attributes["testbed.rpc.transport"] == "inproc"


async def test_local_errors_keep_their_code(
    setup: tuple[RpcClient, web.Application, InMemorySpanExporter],
) -> None:
    client, _, _ = setup
    with pytest.raises(RpcError) as caught:
        await client.call("testbed.demo.v1.DemoService/Echo", Ask(what="missing"), Answer)
    assert caught.value.code is Code.NOT_FOUND
    assert caught.value.trace_id  # the caller's trace, as over HTTP
    with pytest.raises(RpcError) as invalid:
        await client.call("testbed.demo.v1.DemoService/Echo", {"what": 3}, Answer)
    assert invalid.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(RpcError) as unknown:
        await client.call("testbed.demo.v1.DemoService/Nope", Ask(what="x"), Answer)
    assert unknown.value.code is Code.UNIMPLEMENTED


async def test_local_deadline_is_enforced(
    setup: tuple[RpcClient, web.Application, InMemorySpanExporter],
) -> None:
    client, _, _ = setup
    with pytest.raises(RpcError) as caught:
        await client.call(
            "testbed.demo.v1.DemoService/Echo", Ask(what="slow", sleep=5), Answer, timeout=0.2
        )
    assert caught.value.code is Code.DEADLINE_EXCEEDED


async def test_local_retries_only_when_safe(
    setup: tuple[RpcClient, web.Application, InMemorySpanExporter],
) -> None:
    client, state, _ = setup
    with pytest.raises(RpcError):
        await client.call("testbed.demo.v1.DemoService/Echo", Ask(what="busy"), Answer)
    assert state[COUNT_KEY] == ["busy"]  # no key, not idempotent: one try only
    state[COUNT_KEY].clear()
    with pytest.raises(RpcError) as caught:
        await client.call(
            "testbed.demo.v1.DemoService/Echo",
            Ask(what="busy"),
            Answer,
            idempotency_key="key-2",
            timeout=3.0,
        )
    assert caught.value.code is Code.UNAVAILABLE
    assert len(state[COUNT_KEY]) > 1  # retried in-process, as it would be over HTTP
