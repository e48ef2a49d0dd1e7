"""A small RPC process for tests of the mesh: ``python -m tests.support.echo``.

It serves ``testbed.echo.v1.EchoService`` on the process kit of every testbed process
(``observability.app``), so deadlines, errors, tracing and faults behave as in the services:

``Echo(text)``                  answers the text, the instance id and the deadline it saw.
``Sleep(ms)``                   sleeps (cancelled by the deadline); counts started/completed.
``Fail(code, message)``         fails with the given Connect code.
``Chain(method, ms, text)``     calls ``Echo`` or ``Sleep`` on the upstream ``echo`` instance
                                (``TESTBED_UPSTREAMS=echo=host:port``) and nests its answer.
``Increment(amount, fail_after_apply)``  adds to a counter once per ``Idempotency-Key``;
                                ``fail_after_apply`` answers ``unavailable`` after applying the
                                effect the first time (an answer lost on the way back).
``Counter()`` / ``Stats()``     read the counter / the sleep and effect counts.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

from mesh.discovery import StaticDiscovery
from mesh.process import ProcessConfig
from mesh.resilience import profile_named
from mesh.rpc import CallContext, Code, RpcClient, RpcError, RpcService
from observability.app import (
    CONFIG_KEY,
    REGISTRY_KEY,
    TRACER_PROVIDER_KEY,
    create_base_app,
    run,
)

SERVICE = "testbed.echo.v1.EchoService"
MAX_REMEMBERED_KEYS = 1024

echo_service = RpcService(SERVICE)


class Empty(BaseModel):
    pass


class EchoRequest(BaseModel):
    text: str = ""


class EchoResponse(BaseModel):
    text: str
    instance: str
    deadline_ms: int | None  # time left when the handler started, None without a deadline


class SleepRequest(BaseModel):
    ms: int = Field(ge=0, le=60_000)


class SleepResponse(BaseModel):
    slept_ms: int
    instance: str
    deadline_ms: int | None


class FailRequest(BaseModel):
    code: Code
    message: str = "requested failure"


class ChainRequest(BaseModel):
    method: Literal["Echo", "Sleep"] = "Echo"
    ms: int = Field(default=0, ge=0, le=60_000)
    text: str = ""


class ChainResponse(BaseModel):
    instance: str
    deadline_ms: int | None
    downstream: EchoResponse | SleepResponse


class IncrementRequest(BaseModel):
    amount: int = 1
    fail_after_apply: bool = False


class CounterResponse(BaseModel):
    value: int
    instance: str


class StatsResponse(BaseModel):
    instance: str
    sleeps_started: int
    sleeps_completed: int
    effects_applied: int


@dataclass
class EchoState:
    """What the echo process remembers; idempotency keys are bounded (oldest forgotten)."""

    instance: str
    counter: int = 0
    effects_applied: int = 0
    sleeps_started: int = 0
    sleeps_completed: int = 0
    answers: OrderedDict[str, CounterResponse] = field(default_factory=OrderedDict)
    upstream: RpcClient | None = None


STATE_KEY: web.AppKey[EchoState] = web.AppKey("echo_state", EchoState)


def _left_ms(ctx: CallContext) -> int | None:
    left = ctx.remaining()
    return None if left is None else round(left * 1000)


@echo_service.method("Echo", idempotent=True)
async def echo(req: EchoRequest, ctx: CallContext) -> EchoResponse:
    state = ctx.app[STATE_KEY]
    return EchoResponse(text=req.text, instance=state.instance, deadline_ms=_left_ms(ctx))


@echo_service.method("Sleep", idempotent=True)
async def sleep(req: SleepRequest, ctx: CallContext) -> SleepResponse:
    state = ctx.app[STATE_KEY]
    left = _left_ms(ctx)
    state.sleeps_started += 1
    await asyncio.sleep(req.ms / 1000)
    state.sleeps_completed += 1
    return SleepResponse(slept_ms=req.ms, instance=state.instance, deadline_ms=left)


@echo_service.method("Fail")
async def fail(req: FailRequest, ctx: CallContext) -> Empty:
    raise RpcError(req.code, req.message)


@echo_service.method("Chain")
async def chain(req: ChainRequest, ctx: CallContext) -> ChainResponse:
    state = ctx.app[STATE_KEY]
    if state.upstream is None:
        raise RpcError(Code.FAILED_PRECONDITION, "no upstream: set TESTBED_UPSTREAMS=echo=...")
    left = _left_ms(ctx)
    downstream: EchoResponse | SleepResponse
    if req.method == "Echo":
        downstream = await state.upstream.call(
            f"{SERVICE}/Echo", EchoRequest(text=req.text), EchoResponse, idempotent=True
        )
    else:
        downstream = await state.upstream.call(
            f"{SERVICE}/Sleep", SleepRequest(ms=req.ms), SleepResponse, idempotent=True
        )
    return ChainResponse(instance=state.instance, deadline_ms=left, downstream=downstream)


@echo_service.method("Increment")
async def increment(req: IncrementRequest, ctx: CallContext) -> CounterResponse:
    state = ctx.app[STATE_KEY]
    key = ctx.idempotency_key
    if key is not None and key in state.answers:
        state.answers.move_to_end(key)
        return state.answers[key]
    state.counter += req.amount
    state.effects_applied += 1
    answer = CounterResponse(value=state.counter, instance=state.instance)
    if key is not None:
        state.answers[key] = answer
        while len(state.answers) > MAX_REMEMBERED_KEYS:
            state.answers.popitem(last=False)
    if req.fail_after_apply:
        raise RpcError(Code.UNAVAILABLE, "effect applied but the answer was lost (test fault)")
    return answer


@echo_service.method("Counter", idempotent=True)
async def counter(req: Empty, ctx: CallContext) -> CounterResponse:
    state = ctx.app[STATE_KEY]
    return CounterResponse(value=state.counter, instance=state.instance)


@echo_service.method("Stats", idempotent=True)
async def stats(req: Empty, ctx: CallContext) -> StatsResponse:
    state = ctx.app[STATE_KEY]
    return StatsResponse(
        instance=state.instance,
        sleeps_started=state.sleeps_started,
        sleeps_completed=state.sleeps_completed,
        effects_applied=state.effects_applied,
    )


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    process = app[CONFIG_KEY]
    state = app[STATE_KEY]
    if "echo" not in process.upstreams:
        yield
        return
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        state.upstream = RpcClient(
            session,
            StaticDiscovery.from_process(process),
            "echo",
            profile=profile_named(process.resilience),
            registry=app[REGISTRY_KEY],
            tracer_provider=app[TRACER_PROVIDER_KEY],
            caller=process.service,
        )
        yield
        state.upstream = None


def create_app(
    process: ProcessConfig,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> web.Application:
    app = create_base_app(process, registry=registry, tracer_provider=tracer_provider)
    app[STATE_KEY] = EchoState(instance=process.instance_id)
    echo_service.add_routes(app)
    app.cleanup_ctx.append(_upstream_ctx)
    return app


def main() -> None:
    process = ProcessConfig.from_env("echo")
    run(create_app(process), process)


if __name__ == "__main__":
    main()
