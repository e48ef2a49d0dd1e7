"""RCAEval's metrics and the truth rules, on crafted rankings."""

from __future__ import annotations

from typing import Any

import pytest

from chaos.rcascore import (
    Entity,
    Truth,
    ac_at,
    avg_at_5,
    matches,
    rank_of,
    summarize,
    truth_from_units,
)


def inst(name: str) -> Entity:
    return Entity("instance", name, name.rsplit("-", 1)[0])


def link(caller: str, callee: str) -> Entity:
    return Entity("link", callee, callee.rsplit("-", 1)[0], caller, caller.rsplit("-", 1)[0])


def _unit(instance: str) -> dict[str, object]:
    return {"id": instance, "proxy": instance, "instance": {"instance_id": instance,
            "service": instance.rsplit("-", 1)[0]}}  # fmt: skip


def test_ac_at_k_and_avg_at_5() -> None:
    ranks = [1, 2, None, 4, 1]
    assert ac_at(ranks, 1) == pytest.approx(0.4)
    assert ac_at(ranks, 3) == pytest.approx(0.6)
    assert ac_at(ranks, 5) == pytest.approx(0.8)
    assert avg_at_5(ranks) == pytest.approx((0.4 + 0.6 + 0.6 + 0.8 + 0.8) / 5)
    assert ac_at([], 1) == 0.0


def test_undetermined_is_a_miss_not_left_out() -> None:
    assert ac_at([1, None], 1) == 0.5
    assert avg_at_5([None]) == 0.0


def test_instance_truth_needs_the_instance_not_the_service() -> None:
    truth = truth_from_units("service payments", [_unit("payments-2")])
    assert truth == Truth("instance", instances=frozenset({"payments-2"}))
    assert matches(inst("payments-2"), truth)
    assert not matches(inst("payments-1"), truth)
    assert not matches(Entity("instance", "payments", "payments"), truth)
    # A link into the instance is not the instance.
    assert not matches(link("orders-1", "payments-2"), truth)
    assert rank_of([inst("payments-1"), inst("catalog-1"), inst("payments-2")], truth) == 3
    assert rank_of([], truth) is None


def test_a_proxied_service_link_is_the_callee_instance_ingress() -> None:
    truth = truth_from_units("link orders->payments", [_unit("payments-1")])
    assert truth.kind == "link"
    assert matches(link("orders-2", "payments-1"), truth)
    assert matches(inst("payments-1"), truth)  # its ingress carries the link
    assert not matches(link("orders-2", "payments-2"), truth)
    assert not matches(link("gateway-1", "payments-1"), truth)  # not that caller
    assert not matches(inst("orders-2"), truth)  # the caller showing a signal is not enough


def test_a_pop_link_is_that_pop_to_the_balancer() -> None:
    units = [{"id": "cdn-sa->balancer", "proxy": "cdn-sa-to-balancer", "instance": None}]
    truth = truth_from_units("link cdn-sa->balancer", units)
    assert truth == Truth("link", caller="cdn-sa", callees=frozenset({"balancer"}))
    assert matches(link("cdn-sa", "balancer-1"), truth)
    assert not matches(link("cdn-us", "balancer-1"), truth)
    assert not matches(inst("balancer-1"), truth)
    assert not matches(inst("cdn-sa"), truth)


def test_summary_per_type_and_overall() -> None:
    rows: list[dict[str, Any]] = [
        {"case": "a", "type": "network.latency", "truth": "x", "rank": 1, "detect_s": 2.0},
        {"case": "b", "type": "network.latency", "truth": "y", "rank": 3, "detect_s": 4.0},
        {"case": "c", "type": "process.kill", "truth": "z", "rank": None, "detect_s": None},
    ]
    s = summarize(rows)
    assert s["by_type"]["network.latency"] == {
        "cases": 2, "ac1": 0.5, "ac3": 1.0, "avg5": 0.8, "median_detect_s": 3.0,
    }  # fmt: skip
    assert s["overall"]["ac1"] == pytest.approx(0.333)
    assert s["overall"]["median_detect_s"] == 3.0
    assert [m["case"] for m in s["missed"]] == ["b", "c"]
    assert s["missed"][1]["rank"] is None  # undetermined is listed, not hidden
