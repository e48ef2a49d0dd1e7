"""A two-role test process for the management tests: ``python -m tests.management.demo_app``.

``DEMO_ROLE=backend`` answers ``GET /work`` with its instance id and version.
``DEMO_ROLE=front`` answers ``GET /work`` by calling a ``backend`` instance it finds through
``mesh.registry_discovery`` (the registry when ``TESTBED_REGISTRY_URL`` is set), balanced by
``mesh.balancing`` (round robin; a canary gets its share), so a
test can send traffic through the system and watch scaling, deploys and registry outages.
Both register themselves with ``mesh.registration`` like every testbed process.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from mesh.balancing import Balancer
from mesh.discovery import Discovery
from mesh.process import ProcessConfig
from mesh.registration import install_registration
from mesh.registry_discovery import discovery_for
from observability.app import CONFIG_KEY, create_base_app, run

DISCOVERY = web.AppKey("demo_discovery", Discovery)
SESSION = web.AppKey("demo_session", aiohttp.ClientSession)
BALANCER = web.AppKey("demo_balancer", Balancer)
UPSTREAM = "backend"


async def backend_work(request: web.Request) -> web.Response:
    process = request.app[CONFIG_KEY]
    return web.json_response({"instance": process.instance_id, "version": process.version})


async def front_work(request: web.Request) -> web.Response:
    instances = request.app[DISCOVERY].instances(UPSTREAM)
    if not instances:
        return web.json_response({"code": "unavailable", "message": "no backend"}, status=503)
    inst = request.app[BALANCER].pick(instances)
    timeout = aiohttp.ClientTimeout(total=3.0)
    try:
        async with request.app[SESSION].get(inst.base_url + "/work", timeout=timeout) as resp:
            body = await resp.json()
            return web.json_response({"via": inst.address, **body}, status=resp.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return web.json_response(
            {"code": "unavailable", "message": f"{inst.address}: {exc!r}"}, status=502
        )


async def _client(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        discovery = discovery_for(app[CONFIG_KEY], session, [UPSTREAM])
        await discovery.start()
        app[SESSION] = session
        app[DISCOVERY] = discovery
        app[BALANCER] = Balancer("round_robin")
        yield
        await discovery.close()


def create_app(process: ProcessConfig, role: str) -> web.Application:
    app = create_base_app(process)
    if role == "front":
        app.cleanup_ctx.append(_client)
        app.router.add_get("/work", front_work)
    else:
        app.router.add_get("/work", backend_work)
    install_registration(app, process)
    return app


def main() -> None:
    role = os.environ.get("DEMO_ROLE", "backend")
    process = ProcessConfig.from_env(role)
    run(create_app(process, role), process)


if __name__ == "__main__":
    main()
