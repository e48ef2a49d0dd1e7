"""The soak's fault schedule: reproducible from its seed, every component hit (registry and
single-instance ones included), cuts only where a proxy exists, no two faults on one instance
at once, and enough kills and freezes in the default three minutes."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

from chaos.soak.nemesis import NemesisSettings, plan, targets_of
from chaos.stack import InstanceInfo, LinkInfo, StackInfo

COMPONENTS = {
    "registry": 1,
    "catalog": 2,
    "recommendations": 1,
    "inventory": 1,
    "payments": 2,
    "orders": 2,
    "gateway": 2,
    "balancer": 1,
}
PROXIED = {"catalog", "recommendations", "inventory", "payments", "orders", "gateway"}


def stack() -> StackInfo:
    instances = [
        InstanceInfo(
            service=comp,
            instance_id=f"{comp}-{i}",
            address=f"127.0.0.1:{9000 + n * 10 + i}",
            proxy=f"{comp}-{i}" if comp in PROXIED else None,
        )
        for n, (comp, count) in enumerate(COMPONENTS.items())
        for i in range(1, count + 1)
    ]
    instances += [
        InstanceInfo(service="cdn", instance_id=f"cdn-{r}", address=f"127.0.0.1:{9500 + k}")
        for k, r in enumerate(("sa", "us", "eu"))
    ]
    links = tuple(
        LinkInfo(f"cdn-{r}->balancer", "cdn", "balancer", f"cdn-{r}-to-balancer")
        for r in ("sa", "us", "eu")
    )
    return StackInfo(run_dir=Path("/nonexistent"), instances=tuple(instances), links=links)


def test_targets_know_which_proxy_cuts_them() -> None:
    targets = {t.unit.id: t for t in targets_of(stack())}
    assert targets["orders-1"].cut_proxy == "orders-1"
    assert targets["cdn-sa"].cut_proxy == "cdn-sa-to-balancer"
    assert targets["registry-1"].cut_proxy is None
    assert targets["balancer-1"].cut_proxy is None


def test_the_default_schedule_covers_every_component() -> None:
    settings = NemesisSettings()
    targets = targets_of(stack())
    for seed in (1, 2, 3):
        faults = plan(targets, seed=seed, duration=175.0, settings=settings)
        kinds = Counter(f.kind for f in faults)
        assert kinds["kill"] >= 20, kinds
        assert kinds["freeze"] >= 10, kinds
        assert kinds["cut"] >= 5, kinds
        assert {f.component for f in faults} == {*COMPONENTS, "cdn"}
        for component in ("registry", "inventory", "balancer", "recommendations"):
            assert {f.kind for f in faults if f.component == component} & {"kill", "freeze"}
        assert all(f.at + f.duration < 175.0 for f in faults)
        proxied = {t.unit.id for t in targets if t.cut_proxy}
        assert all(f.instance in proxied for f in faults if f.kind == "cut")
        assert {f.variant for f in faults if f.kind == "cut"} <= {
            "network.down",
            "network.reset_peer",
        }


def test_no_two_faults_on_one_instance_at_once() -> None:
    faults = plan(targets_of(stack()), seed=7, duration=175.0, settings=NemesisSettings())
    by_instance: dict[str, list[tuple[float, float]]] = {}
    for f in faults:
        by_instance.setdefault(f.instance, []).append((f.at, f.at + f.duration))
    for windows in by_instance.values():
        windows.sort()
        for (_, end), (start, _) in itertools.pairwise(windows):
            assert start >= end


def test_one_seed_one_schedule() -> None:
    targets = targets_of(stack())
    settings = NemesisSettings()
    first = plan(targets, seed=5, duration=60.0, settings=settings)
    assert first == plan(targets, seed=5, duration=60.0, settings=settings)
    assert first != plan(targets, seed=6, duration=60.0, settings=settings)


def test_every_planned_fault_can_be_rebuilt_from_its_journal_record() -> None:
    """``testbed chaos rollback`` undoes a crashed soak's faults from their records."""
    from chaos.faults import FaultContext, build_fault, fault_from_record
    from chaos.faults.processes import SignalControl
    from chaos.soak.nemesis import _spec

    settings = NemesisSettings()
    targets = {t.unit.id: t for t in targets_of(stack())}
    ctx = FaultContext(stack(), None, None, SignalControl())  # type: ignore[arg-type]
    faults = plan(list(targets.values()), seed=3, duration=60.0, settings=settings)
    assert {f.kind for f in faults} == {"kill", "freeze", "cut"}
    for p in faults:
        fault = build_fault("soak1", _spec(p, settings), [targets[p.instance].unit], ctx)
        again = fault_from_record(fault.record(), ctx)
        assert again.spec == fault.spec
        assert [u.id for u in again.units] == [p.instance]
