"""The registry's URL map, on one screen.

``PUT    /v1/services/{service}/instances/{id}``            register ``{address, version, metadata,
                                                          ttl_seconds, session}``
``PUT    /v1/services/{service}/instances/{id}/heartbeat``  renew ``{session}``; 404 = register
                                                          again, 410 = drained, stop
``DELETE /v1/services/{service}/instances/{id}?session=``   deregister (graceful shutdown)
``POST   /v1/services/{service}/instances/{id}/drain``      management: deregister + refuse that
                                                          session from now on
``GET    /v1/services/{service}?index=N&wait=S``            the instances; blocks up to S seconds
                                                          until the index passes N (long-poll)
``GET    /v1/services``                                     every service with its instances
"""

from __future__ import annotations

from aiohttp import web

from management.registry import handlers


def add_routes(app: web.Application) -> None:
    instance = "/v1/services/{service}/instances/{instance_id}"
    app.router.add_put(instance, handlers.register)
    app.router.add_put(instance + "/heartbeat", handlers.heartbeat)
    app.router.add_delete(instance, handlers.deregister)
    app.router.add_post(instance + "/drain", handlers.drain)
    app.router.add_get("/v1/services/{service}", handlers.list_service)
    app.router.add_get("/v1/services", handlers.list_all)
