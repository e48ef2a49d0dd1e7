"""Blind localisation with each process's own metrics beside the spans (crafted series, as
``chaos.procmetrics`` reads them from Prometheus): a CPU burn or a stopped process behind a
host-wide stall; requests in flight at a caller are no evidence against it."""

from __future__ import annotations

import random
from collections.abc import Mapping

from chaos.blind import localize_blind
from chaos.rcascore import rank_of
from tests.chaos.test_blind import FAULT_FROM, FAULT_TO, RUN_S, T0, Fault, inst, traffic

INSTANCES = ("catalog-1", "catalog-2", "payments-1", "payments-2", "gateway-1", "balancer-1")
USUAL = {"cpu": 0.01, "rss_mb": 60.0, "in_flight": 0.0, "up": 1.0}
HOST_STALL = Fault(
    self_ms={"catalog-1": 150.0, "catalog-2": 400.0, "payments-1": 150.0, "payments-2": 150.0}
)
"""The two shared cores stalled: every service's own time grows at once, the busiest most."""


def metrics(
    changes: Mapping[str, Mapping[str, float]],
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Per metric and instance, one sample a second: the usual level with a little noise, plus
    ``changes[metric][instance]`` while the fault holds (memory grows to it)."""
    rng = random.Random(3)
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for metric, usual in USUAL.items():
        per = out.setdefault(metric, {})
        for name in INSTANCES:
            points = []
            for s in range(int(RUN_S)):
                t = T0 + s + 0.5
                on = FAULT_FROM <= s < FAULT_TO
                noise = (
                    0.0 if metric == "up" else abs(rng.gauss(0, 0.003 if metric == "cpu" else 0.2))
                )
                extra = changes.get(metric, {}).get(name, 0.0) if on else 0.0
                if metric == "rss_mb":  # a leak grows: its full size at the fault's end
                    extra *= (s - FAULT_FROM + 1) / (FAULT_TO - FAULT_FROM)
                points.append((t, usual + noise + extra))
            per[name] = points
    return out


def _first(fx: Fault, changes: Mapping[str, Mapping[str, float]]) -> list[str]:
    result = localize_blind(traffic(fx), metrics=metrics(changes))
    assert result.window is not None, result.reason
    assert result.window.start_s < T0 + FAULT_TO
    assert result.window.end_s > T0 + FAULT_FROM
    return [s.name for s in result.suspects]


def test_a_cpu_burn_behind_a_host_stall_is_ranked_first() -> None:
    # Everything is slower; only catalog-1's own CPU rose, to a tenth of a core (a burn
    # starved by the other processes on two shared cores gets little more).
    names = _first(HOST_STALL, {"cpu": {"catalog-1": 0.08}})
    assert names[0] == "catalog-1", names


def test_a_memory_leak_behind_a_host_stall_is_ranked_first() -> None:
    leak = {"rss_mb": {"payments-2": 150.0}}
    names = _first(HOST_STALL, leak)
    assert names[0] == "payments-2", names


def test_a_stopped_process_failing_its_scrapes_is_ranked_first() -> None:
    names = _first(HOST_STALL, {"up": {"payments-1": -1.0}})
    assert names[0] == "payments-1", names


def test_requests_piling_up_in_flight_at_a_caller_do_not_take_the_blame() -> None:
    # payments-1 slows; the balancer, above it, holds more requests in flight meanwhile (as
    # every caller up the chain does): that says something below is slow, not where.
    names = _first(Fault(self_ms={"payments-1": 150.0}), {"in_flight": {"balancer-1": 4.0}})
    assert names[0] == "payments-1", names
    assert "balancer-1" not in names


def test_usual_metrics_alone_raise_no_window() -> None:
    result = localize_blind(traffic(None), metrics=metrics({}))
    assert result.window is None
    assert rank_of([], inst("payments-1")) is None


def test_without_metrics_the_host_stall_names_no_single_instance() -> None:
    # The control: the spans alone cannot tell which process burnt the cores.
    result = localize_blind(traffic(HOST_STALL))
    scores = [s.score for s in result.suspects[:4]]
    assert len(scores) == 4
    assert max(scores) - min(scores) < 0.2
