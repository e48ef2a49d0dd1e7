"""Hand-over deploys: which programs share their port, the temporary successor's identity."""

from __future__ import annotations

from pathlib import Path

from management.plan import build_plan, spare_admin_port
from management.stack import Stack
from management.supervisor import Supervisor
from management.topology import load_topology


def test_spare_admin_port_is_inside_the_component_block_and_unused(tmp_path: Path) -> None:
    plan = build_plan(load_topology(), base_port=40000, run_dir=tmp_path)
    taken = plan.ports()
    for inst in (*plan.of("balancer"), *plan.of("cdn")):
        spare = spare_admin_port(inst)
        assert spare not in taken
        assert inst.port < spare < inst.port + 30  # the component's block of ports


def test_only_the_single_instance_kinds_share_their_port(tmp_path: Path) -> None:
    plan = build_plan(load_topology(), base_port=40000, run_dir=tmp_path)
    stack = Stack(tmp_path, plan, {}, Supervisor(tmp_path / "none.sock"))
    sharing = {
        i.instance_id
        for i in plan.instances
        if stack._instance_spec(i).env.get("TESTBED_REUSE_PORT") == "1"
    }
    assert sharing == {"balancer-1", "cdn-sa", "cdn-us", "cdn-eu"}
    # A program written before hand-over deploys (no shared port) is restarted in place.
    (balancer,) = plan.of("balancer")
    assert not stack._shares_port(balancer)
    stack.programs_dir.mkdir(parents=True)
    stack._write_program(stack._instance_spec(balancer))
    assert stack._shares_port(balancer)
    successor = stack._successor(balancer)
    assert successor.port == balancer.port
    assert successor.instance_id == "balancer-1-next"
    assert successor.env["TESTBED_INSTANCE_ID"] == "balancer-1-next"
    assert successor.env["TESTBED_ADMIN_PORT"] == str(successor.admin_port)
    assert successor.admin_port not in plan.ports()
