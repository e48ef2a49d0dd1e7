"""A ``monolith`` component: validated with file/line/fix, planned with one proxy and one
process for the services it hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.stack import StackInfo
from management.plan import build_plan
from management.topology import HOSTABLE, TopologyError, load_topology, parse_topology
from services.monolith.config import SERVICES

SHIPPED = Path(__file__).resolve().parents[2] / "management" / "topology.monolith.yaml"


def problems(text: str) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "mono.yaml")
    return info.value.problems


def test_hostable_services_match_what_the_monolith_can_run() -> None:
    assert HOSTABLE == SERVICES


def test_shipped_monolith_topology_plans_one_process_and_edge_proxies(tmp_path: Path) -> None:
    topo = load_topology(SHIPPED)
    assert topo.services_of("shop") == SERVICES
    assert topo.host_of("orders") == "shop"
    plan = build_plan(topo, base_port=40000, run_dir=tmp_path)
    (shop,) = plan.of("shop")
    assert shop.module == "services.monolith"
    assert shop.env["MONOLITH_SERVICES"] == ",".join(SERVICES)
    assert shop.advertise == f"127.0.0.1:{shop.proxy_port}"  # the gateway -> shop link
    # Only links that cross a process have a proxy: none between hosted services.
    assert {p.name for p in plan.proxies} == {
        "shop-1",
        "gateway-1",
        "gateway-2",
        "cdn-sa-to-balancer",
        "cdn-us-to-balancer",
        "cdn-eu-to-balancer",
    }
    # The gateway's static fallback names each hosted service at the monolith's address.
    upstreams = plan.instance("gateway-1").env["TESTBED_UPSTREAMS"].split(";")
    assert f"orders={shop.advertise}" in upstreams
    assert f"catalog={shop.advertise}" in upstreams


def test_experiments_see_hosted_services_as_the_monolith() -> None:
    info = StackInfo(run_dir=Path("."), hosted_by={"orders": "shop"})
    assert info.instances_of("orders") == info.instances_of("shop")


def test_monolith_needs_known_hosts_each_once() -> None:
    found = problems("""\
components:
  shop: {kind: monolith}
  big: {kind: monolith, hosts: [orders, billing, orders]}
""")
    assert found[0].startswith("mono.yaml:2:")
    assert "needs 'hosts'" in found[0]
    assert "hosts: [catalog, recommendations, inventory, payments, orders]" in found[0]
    assert any(p.startswith("mono.yaml:3:") and "unknown service 'billing'" in p for p in found)
    assert any("listed twice" in p for p in found)


def test_a_service_runs_in_one_place_and_links_go_to_the_monolith() -> None:
    found = problems("""\
components:
  shop: {kind: monolith, hosts: [catalog, orders]}
  orders: {kind: service}
  gateway: {kind: gateway}
  api: {kind: service, hosts: [catalog]}
links:
  - {from: gateway, to: catalog}
""")
    text = "\n".join(found)
    assert "'orders' is also a component of its own" in text
    assert "only a monolith has 'hosts'" in text
    assert "mono.yaml:7:" in text
    assert "'catalog' runs inside the monolith 'shop': link to 'shop' instead" in text
