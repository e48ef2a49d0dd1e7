"""Alert firings from ``ALERTS`` samples: runs, gaps, still firing at the end."""

from __future__ import annotations

import pytest

from chaos.alerts import AlertFiring, AlertQueryError, alert_firings, firings_from_series

DOWN = {"__name__": "ALERTS", "alertname": "InstanceDown", "alertstate": "firing",
        "service": "orders", "instance": "orders-1", "severity": "page"}  # fmt: skip


def test_a_run_of_samples_is_one_firing_resolved_one_interval_after_its_last() -> None:
    (firing,) = firings_from_series([(DOWN, [100.0, 101.0, 102.0, 103.0])], end=120.0)
    assert firing == AlertFiring(
        "InstanceDown", {"service": "orders", "instance": "orders-1", "severity": "page"},
        100.0, 104.0,
    )  # fmt: skip
    assert firing.service == "orders"
    assert firing.instance == "orders-1"
    assert firing.active_at(103.5)
    assert not firing.active_at(104.0)


def test_a_gap_splits_two_firings_and_a_late_last_sample_is_still_firing() -> None:
    firings = firings_from_series([(DOWN, [103.0, 100.0, 101.0, 110.0, 111.0, 112.0])], end=113.0)
    assert [(f.fired_at, f.resolved_at) for f in firings] == [(100.0, 104.0), (110.0, None)]


def test_firings_are_sorted_by_time_and_empty_series_are_skipped() -> None:
    late = {**DOWN, "alertname": "ServiceErrorBudgetBurn", "instance": ""}
    firings = firings_from_series([(late, [50.0]), (DOWN, [40.0]), (DOWN, [])], end=60.0)
    assert [f.name for f in firings] == ["InstanceDown", "ServiceErrorBudgetBurn"]
    assert firings[0].to_data() == {
        "name": "InstanceDown",
        "labels": {"service": "orders", "instance": "orders-1", "severity": "page"},
        "fired_at": 40.0,
        "resolved_at": 41.0,
    }
    assert [AlertFiring.from_data(f.to_data()) for f in firings] == firings


def test_an_unreachable_prometheus_is_a_clear_error() -> None:
    from tests.support.processes import free_port

    with pytest.raises(AlertQueryError, match="cannot read alerts from Prometheus"):
        alert_firings(f"http://127.0.0.1:{free_port()}", 0.0, 10.0, timeout=2.0)
    with pytest.raises(ValueError, match="before it starts"):
        alert_firings("http://127.0.0.1:1", 10.0, 5.0)
