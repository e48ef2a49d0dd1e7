"""Blast radius picks instances reproducibly from the experiment's seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.model import Target
from chaos.stack import InstanceInfo, LinkInfo, StackInfo
from chaos.targets import resolve
from mesh.errors import ConfigError


def _stack() -> StackInfo:
    instances = tuple(
        InstanceInfo(
            service="orders",
            instance_id=f"orders-{i}",
            address=f"127.0.0.1:{9000 + i}",
            proxy=f"orders-{i}",
        )
        for i in range(1, 11)
    )
    links = (
        LinkInfo("cdn-sa->balancer", "cdn", "balancer", "cdn-sa-to-balancer"),
        LinkInfo("cdn-us->balancer", "cdn", "balancer", "cdn-us-to-balancer"),
    )
    return StackInfo(run_dir=Path("."), instances=instances, links=links)


def _ids(target: Target, radius: str | float, seed: int, name: str = "f") -> list[str]:
    return [u.id for u in resolve(target, radius, _stack(), seed=seed, fault_name=name)]  # type: ignore[arg-type]


def test_same_seed_same_pick_and_the_seed_matters() -> None:
    svc = Target(service="orders")
    picks = {tuple(_ids(svc, "one", seed)) for seed in range(20)}
    assert all(len(p) == 1 for p in picks)
    assert len(picks) > 1, "different seeds pick different instances"
    for seed in range(5):
        assert _ids(svc, 30.0, seed) == _ids(svc, 30.0, seed)
        assert _ids(svc, "one", seed, "a") == _ids(svc, "one", seed, "a")


def test_radius_sizes() -> None:
    svc = Target(service="orders")
    assert len(_ids(svc, "all", 1)) == 10
    assert len(_ids(svc, 30.0, 1)) == 3
    assert len(_ids(svc, 25.0, 1)) == 3  # rounded up
    assert len(_ids(svc, 1.0, 1)) == 1  # at least one
    assert _ids(Target(instance="orders-7"), "all", 1) == ["orders-7"]


def test_links() -> None:
    assert _ids(Target(link="cdn->balancer"), "all", 1) == ["cdn-sa->balancer", "cdn-us->balancer"]
    assert _ids(Target(link="cdn-sa->balancer"), "all", 1) == ["cdn-sa->balancer"]
    # a service link goes to the callee's instance proxies
    assert len(_ids(Target(link="gateway->orders"), "all", 1)) == 10


def test_unknown_targets_name_what_exists() -> None:
    with pytest.raises(
        ConfigError, match=r"no running instance of service 'payments' \(running: orders\)"
    ):
        _ids(Target(service="payments"), "all", 1)
    with pytest.raises(ConfigError, match="no instance 'orders-99'"):
        _ids(Target(instance="orders-99"), "all", 1)
