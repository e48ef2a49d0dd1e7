"""The monolith's app in one test process: the services' own code behind one listener, calls
between them in-process, each service's own database, the audit clean."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from mesh.errors import ConfigError
from services.audit import run_audit_at
from services.monolith import Config, create_app
from services.monolith.config import parse_services

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
JSON = {"Content-Type": "application/json"}


def test_hosted_services_are_checked_and_ordered() -> None:
    assert parse_services("orders, catalog") == ("catalog", "orders")
    with pytest.raises(ConfigError, match=r"unknown service.*billing.*choose among"):
        parse_services("orders,billing")
    with pytest.raises(ConfigError, match="listed twice"):
        parse_services("orders,orders")


def test_each_hosted_service_keeps_its_name_and_the_monolith_address(tmp_path: Path) -> None:
    config = Config.from_env(
        {
            "TESTBED_SERVICE": "shop",
            "TESTBED_INSTANCE_ID": "shop-1",
            "TESTBED_PORT": "4100",
            "TESTBED_ADVERTISE": "127.0.0.1:4102",
            "TESTBED_ADMIN_PORT": "4101",
            "TESTBED_RUN_DIR": str(tmp_path),
            "MONOLITH_SERVICES": "orders,payments",
        }
    )
    assert config.names == ("payments", "orders")
    orders = config.hosted[1].config.process
    assert (orders.service, orders.instance_id) == ("orders", "shop-1-orders")
    assert orders.advertised_address == "127.0.0.1:4102"
    assert orders.admin_port is None


async def test_checkout_runs_in_process_and_audits_clean(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    config = Config.from_env(
        {
            "TESTBED_SERVICE": "shop",
            "TESTBED_RUN_DIR": str(tmp_path),
            "TESTBED_PORT": "0",
            # The simulated provider declines 5% of keys by default; this test is about the
            # in-process wiring, so every charge is accepted.
            "PAYMENTS_DECLINE_PROBABILITY": "0",
        }
    )
    client = await aiohttp_client(create_app(config))
    resp = await client.post(
        "/testbed.orders.v1.OrderService/PlaceOrder",
        json={"items": [{"product_id": "p-003", "quantity": 2}]},
        headers=JSON,
    )
    assert resp.status == 200, await resp.text()
    order = (await resp.json())["order"]
    assert order["status"] == "confirmed"
    ready = await client.get("/readyz")
    assert ready.status == 200
    # Orders called catalog, inventory and payments through its RpcClients, in-process.
    metrics = await (await client.get("/metrics")).text()
    for upstream, method in (("catalog", "GetProduct"), ("payments", "Charge")):
        line = (
            f'rpc_client_calls_total{{code="ok",hosted_service="orders",'
            f'method="{method}",upstream="{upstream}"}} '
        )
        assert line in metrics
    # Each service its own database file, as when they run apart.
    data = {p.name for p in (tmp_path / "data").glob("*.sqlite3")}
    assert data == {f"{s}.sqlite3" for s in ("catalog", "inventory", "payments", "orders")}
    address = f"{client.host}:{client.port}"
    report = await run_audit_at(
        {s: address for s in ("orders", "inventory", "payments", "catalog")}
    )
    assert report.ok, report
    assert report.counts["orders_confirmed"] == 1
