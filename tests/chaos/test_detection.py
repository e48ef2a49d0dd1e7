"""Time to detect and to recover, from crafted fault records and alert firings."""

from __future__ import annotations

from typing import Any

import pytest

from chaos.alerts import AlertFiring
from chaos.detection import GRACE_S, FaultScope, detect, detection_section


def _instance_fault(service: str, instance: str, **times: float | None) -> dict[str, Any]:
    return {
        "id": f"1-kill-{service}",
        "type": "process.kill",
        "spec": {"target": {"service": service}},
        "units": [{"id": instance, "instance": {"service": service, "instance_id": instance}}],
        **times,
    }


def _firing(name: str, fired: float, resolved: float | None, **labels: str) -> AlertFiring:
    return AlertFiring(name, labels, fired, resolved)


KILL = _instance_fault("orders", "orders-2", planned_at=100.0, applied_at=100.4,
                       rolled_back_at=112.0)  # fmt: skip


def test_the_first_relevant_alert_after_the_fault_detects_it() -> None:
    firings = [
        # Already firing before the fault: not a detection.
        _firing("InstanceCpuSaturated", 90.0, 103.0, service="orders", instance="orders-1"),
        # Another service's alert, another instance of the same service: not relevant.
        _firing("ServiceLatencyBudgetBurn", 100.9, 104.0, service="catalog"),
        _firing("InstanceDown", 101.0, 102.0, service="orders", instance="orders-1"),
        _firing("InstanceRestarted", 103.0, 115.0, service="orders", instance="orders-2"),
        _firing("InstanceDown", 101.6, 102.6, service="orders", instance="orders-2"),
    ]
    d = detect(KILL, firings, end=140.0)
    assert d.first is not None
    assert d.first.name == "InstanceDown"
    assert d.ttd_s == pytest.approx(1.2)
    assert [f.name for f in d.firings] == ["InstanceDown", "InstanceRestarted"]
    # Recovered when the last relevant alert resolved: 14.6 s after the fault, 3 s after rollback.
    assert d.recovered_at == 115.0
    assert d.ttr_s == pytest.approx(14.6)
    assert d.clear_after_rollback_s == pytest.approx(3.0)


def test_an_alert_while_applying_counts_as_zero_and_a_late_one_is_no_detection() -> None:
    during_apply = [_firing("InstanceDown", 100.1, 101.0, instance="orders-2")]
    assert detect(KILL, during_apply, end=140.0).ttd_s == 0.0
    too_late = [_firing("InstanceDown", 112.0 + GRACE_S + 1, None, service="orders")]
    d = detect(KILL, too_late, end=140.0)
    assert d.first is None
    assert d.ttd_s is None
    assert d.to_data()["detected"] is False


def test_an_alert_still_firing_means_not_recovered() -> None:
    firings = [_firing("InstanceDown", 101.0, None, service="orders", instance="orders-2")]
    d = detect(KILL, firings, end=140.0)
    assert d.ttd_s == pytest.approx(0.6)
    assert d.recovered_at is None
    assert d.ttr_s is None


def test_link_alerts_name_the_callee_and_link_proxies_their_caller() -> None:
    slow_payments = {
        "id": "1-slow", "type": "network.latency", "planned_at": 10.0, "applied_at": 10.1,
        "rolled_back_at": 30.0, "spec": {"target": {"service": "payments"}},
        "units": [{"id": "payments-1", "proxy": "payments-1",
                   "instance": {"service": "payments", "instance_id": "payments-1"}}],
    }  # fmt: skip
    link_alert = _firing(
        "LinkLatencyBudgetBurn", 12.5, 33.0, service="payments", caller="orders",
        link="orders->payments", instance="",
    )  # fmt: skip
    assert detect(slow_payments, [link_alert], end=60.0).ttd_s == pytest.approx(2.4)

    cdn_link = {"units": [{"id": "cdn-sa->balancer", "proxy": "cdn-sa-to-balancer"}],
                "spec": {"target": {"link": "cdn -> balancer"}}}  # fmt: skip
    scope = FaultScope.of(cdn_link)
    assert scope == FaultScope(
        services=frozenset({"balancer"}),
        instances=frozenset({"cdn-sa"}),
        links=frozenset({"cdn->balancer"}),
    )
    assert scope.covers(_firing("InstanceDown", 1.0, None, instance="cdn-sa"))
    assert not scope.covers(_firing("InstanceDown", 1.0, None, instance="cdn-eu", service="cdn"))


def test_the_section_gives_the_median_and_a_headline() -> None:
    second = _instance_fault("payments", "payments-1", planned_at=200.0, applied_at=200.0,
                             rolled_back_at=205.0)  # fmt: skip
    unapplied = {**second, "id": "3-x", "applied_at": None}
    firings = [
        _firing("InstanceDown", 102.0, 104.0, service="orders", instance="orders-2"),
        _firing("InstanceDown", 204.0, 207.0, service="payments", instance="payments-1"),
    ]
    section = detection_section([KILL, second, unapplied], firings, end=300.0)
    assert [f["ttd_s"] for f in section["faults"]] == [1.6, 4.0]
    assert section["median_ttd_s"] == pytest.approx(2.8)
    assert section["headline"] == "2/2 (median 2.8 s)"
    assert len(section["alerts"]) == 2
    assert detection_section([KILL], [], end=300.0)["headline"] == "no"
    assert detection_section([KILL], firings, end=300.0)["headline"] == "1.6 s"
    assert detection_section([unapplied], firings, end=300.0)["headline"] == "n/a"
