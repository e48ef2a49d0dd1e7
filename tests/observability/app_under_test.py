"""A tiny process built on the process kit, for the observability tests.

``python -m tests.observability.app_under_test`` serves::

    GET /items/{item_id}       {"item_id": ...}, logs one line inside the request
    GET /slow?seconds=S        answers after S seconds (drain tests)
    GET /boom                  raises (the JSON 500 answer)
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from mesh.process import ProcessConfig
from observability.app import create_base_app, run
from observability.logs import get_logger

log = get_logger(__name__)


async def get_item(request: web.Request) -> web.Response:
    item_id = request.match_info["item_id"]
    log.info("item_served", item_id=item_id)
    return web.json_response({"item_id": item_id})


async def slow(request: web.Request) -> web.Response:
    try:
        seconds = float(request.query.get("seconds", "1"))
    except ValueError:
        raise web.HTTPBadRequest(reason="seconds must be a number") from None
    await asyncio.sleep(min(seconds, 30.0))
    return web.json_response({"slept": seconds})


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("the handler failed on purpose")


def create_app(process: ProcessConfig) -> web.Application:
    app = create_base_app(process)
    app.router.add_get("/items/{item_id}", get_item)
    app.router.add_get("/slow", slow)
    app.router.add_get("/boom", boom)
    return app


def main() -> None:
    process = ProcessConfig.from_env("app-under-test")
    run(create_app(process), process)


if __name__ == "__main__":
    main()
