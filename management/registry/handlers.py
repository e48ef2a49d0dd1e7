"""The registry's HTTP handlers: thin, they parse, call the store and answer JSON.

Errors have the testbed's one shape: ``{"code": ..., "message": ..., "trace_id": ...}``.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from management.registry.config import RegistryConfig
from management.registry.store import Draining, Full, Record, RegistryStore

CONFIG = web.AppKey("registry_config", RegistryConfig)
STORE = web.AppKey("registry_store", RegistryStore)

INDEX_HEADER = "X-Registry-Index"
EPOCH_HEADER = "X-Registry-Epoch"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(pattern=_ADDRESS.pattern, max_length=300)
    version: str = Field(default="v1", min_length=1, max_length=64)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=32)
    ttl_seconds: float | None = Field(default=None, gt=0)
    session: str = Field(min_length=1, max_length=128)


class HeartbeatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session: str = Field(min_length=1, max_length=128)


def error(status: int, code: str, message: str) -> web.Response:
    ctx = trace.get_current_span().get_span_context()
    trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
    return web.json_response(
        {"code": code, "message": message, "trace_id": trace_id}, status=status
    )


def _names(request: web.Request) -> tuple[str, str] | web.Response:
    service = request.match_info["service"]
    instance_id = request.match_info.get("instance_id", "x")
    for what, value in (("service", service), ("instance id", instance_id)):
        if not _NAME.match(value):
            return error(400, "invalid_argument", f"{what} {value!r} has characters not allowed")
    return service, instance_id


def _headers(store: RegistryStore, index: int) -> dict[str, str]:
    return {INDEX_HEADER: str(index), EPOCH_HEADER: store.epoch}


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def _records(records: list[Record]) -> list[dict[str, object]]:
    return [r.to_json() for r in records]


async def register(request: web.Request) -> web.Response:
    names = _names(request)
    if isinstance(names, web.Response):
        return names
    service, instance_id = names
    config, store = request.app[CONFIG], request.app[STORE]
    try:
        body = RegisterBody.model_validate(await _json_body(request))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return error(400, "invalid_argument", f"{where}: {first['msg']}")
    ttl = min(body.ttl_seconds or config.default_ttl, config.max_ttl)
    try:
        index = store.register(
            service,
            instance_id,
            address=body.address,
            version=body.version,
            metadata=body.metadata,
            ttl=ttl,
            session=body.session,
        )
    except Draining as exc:
        return error(410, "failed_precondition", f"{exc}: do not register again")
    except Full as exc:
        return error(429, "resource_exhausted", str(exc))
    return web.json_response(
        {"index": index, "ttl_seconds": ttl, "epoch": store.epoch}, headers=_headers(store, index)
    )


async def heartbeat(request: web.Request) -> web.Response:
    names = _names(request)
    if isinstance(names, web.Response):
        return names
    service, instance_id = names
    store = request.app[STORE]
    try:
        body = HeartbeatBody.model_validate(await _json_body(request))
    except ValidationError:
        return error(400, "invalid_argument", "body: needs {'session': '<the registration's>'}")
    try:
        record = store.heartbeat(service, instance_id, body.session)
    except Draining as exc:
        return error(410, "failed_precondition", f"{exc}: do not register again")
    except LookupError as exc:
        return error(404, "not_found", f"{exc}: register again")
    return web.json_response({"ttl_seconds": record.ttl, "epoch": store.epoch})


async def deregister(request: web.Request) -> web.Response:
    names = _names(request)
    if isinstance(names, web.Response):
        return names
    service, instance_id = names
    store = request.app[STORE]
    removed = store.deregister(service, instance_id, request.query.get("session") or None)
    index = store.service_index(service)
    return web.json_response({"removed": removed, "index": index}, headers=_headers(store, index))


async def drain(request: web.Request) -> web.Response:
    names = _names(request)
    if isinstance(names, web.Response):
        return names
    service, instance_id = names
    store = request.app[STORE]
    removed = store.drain(service, instance_id)
    index = store.service_index(service)
    return web.json_response({"removed": removed, "index": index}, headers=_headers(store, index))


async def list_service(request: web.Request) -> web.Response:
    """Instances of one service; ``?index=N&wait=S`` blocks until the list changes past N."""
    names = _names(request)
    if isinstance(names, web.Response):
        return names
    service, _ = names
    config, store = request.app[CONFIG], request.app[STORE]
    try:
        index = int(request.query.get("index", "0"))
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        return error(400, "invalid_argument", "index must be an integer and wait a number")
    same_epoch = request.query.get("epoch", store.epoch) == store.epoch
    if "index" in request.query and wait > 0 and same_epoch:
        await store.wait_for_change(service, index, min(wait, config.max_wait))
    current = store.service_index(service)
    return web.json_response(
        {
            "service": service,
            "index": current,
            "epoch": store.epoch,
            "instances": _records(store.instances(service)),
        },
        headers=_headers(store, current),
    )


async def list_all(request: web.Request) -> web.Response:
    store = request.app[STORE]
    services = {name: _records(records) for name, records in store.services().items()}
    return web.json_response(
        {"index": store.index, "epoch": store.epoch, "services": services},
        headers=_headers(store, store.index),
    )
