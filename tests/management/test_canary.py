"""The canary's verdict (a pure function over per-version samples) and its place in the plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from management.canary import Thresholds, VersionSample, judge
from management.plan import CanaryPlan, build_plan
from management.topology import load_topology

LIMITS = Thresholds(min_requests=20, max_error_ratio_increase=0.02, max_p99_ratio=1.5)


def v(
    version: str, requests: float, errors: float = 0, p99_ms: float | None = 100
) -> VersionSample:
    return VersionSample(version, requests, errors, None if p99_ms is None else p99_ms / 1000)


def test_as_good_as_the_old_version_is_promoted() -> None:
    verdict = judge(v("v1", 300, 3), v("v2", 100, 1, p99_ms=120), LIMITS)
    assert verdict.decision == "promote"
    assert verdict.share == pytest.approx(0.25)


def test_more_errors_than_allowed_roll_back_and_say_by_how_much() -> None:
    verdict = judge(v("v1", 300, 3), v("v2", 100, 4), LIMITS)
    assert verdict.decision == "rollback"
    assert "error ratio 4.00% vs 1.00%" in verdict.reasons[0]


def test_an_increase_within_the_allowance_is_promoted() -> None:
    assert judge(v("v1", 300, 3), v("v2", 100, 2), LIMITS).decision == "promote"


def test_a_slower_canary_rolls_back() -> None:
    verdict = judge(v("v1", 300, p99_ms=100), v("v2", 100, p99_ms=400), LIMITS)
    assert verdict.decision == "rollback"
    assert "p99 400 ms vs 100 ms" in verdict.reasons[0]


def test_a_tiny_baseline_p99_is_floored() -> None:
    # 2 ms against 5 ms is noise, not a regression: the old p99 counts as 10 ms.
    assert judge(v("v1", 300, p99_ms=2), v("v2", 100, p99_ms=5), LIMITS).decision == "promote"
    assert judge(v("v1", 300, p99_ms=2), v("v2", 100, p99_ms=16), LIMITS).decision == "rollback"


def test_both_reasons_are_given() -> None:
    verdict = judge(v("v1", 300), v("v2", 100, 50, p99_ms=900), LIMITS)
    assert verdict.decision == "rollback"
    assert len(verdict.reasons) == 2


@pytest.mark.parametrize(("old", "new"), [(300, 19), (19, 300), (0, 0)])
def test_too_little_traffic_is_inconclusive(old: int, new: int) -> None:
    verdict = judge(v("v1", old, 0), v("v2", new, new), LIMITS)
    assert verdict.decision == "inconclusive"
    assert "too little traffic" in verdict.reasons[-1]


def test_missing_p99_does_not_decide() -> None:
    assert judge(v("v1", 300, p99_ms=None), v("v2", 100), LIMITS).decision == "promote"


@pytest.mark.parametrize(
    "kwargs",
    [{"min_requests": 0}, {"max_error_ratio_increase": 1.5}, {"max_p99_ratio": 0.9}],
)
def test_nonsense_thresholds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Thresholds(**kwargs)  # type: ignore[arg-type]


def test_the_canary_takes_the_last_slot_and_its_own_version(tmp_path: Path) -> None:
    topo = load_topology()
    plain = build_plan(topo, base_port=30000, run_dir=tmp_path)
    plan = build_plan(
        topo,
        base_port=30000,
        run_dir=tmp_path,
        canaries={"payments": CanaryPlan(version="v2", share=0.25)},
    )
    canary = plan.instance("payments-canary")
    assert canary.version == "v2"
    assert canary.env["TESTBED_VERSION"] == "v2"
    assert canary.env["TESTBED_CANARY_SHARE"] == "0.25"
    assert {p.name for p in plan.proxies} - {p.name for p in plain.proxies} == {"payments-canary"}
    # Nothing else moves, and nobody finds the canary through the static fallback lists.
    others = [i for i in plan.instances if i.instance_id != "payments-canary"]
    assert [(i.instance_id, i.port, i.version) for i in others] == [
        (i.instance_id, i.port, i.version) for i in plain.instances
    ]
    assert all(str(canary.proxy_port) not in i.env.get("TESTBED_UPSTREAMS", "") for i in others)
    assert canary.port not in plain.ports()
