"""The edge benchmark's own arithmetic (the benchmark itself is run by hand, not by tests)."""

from __future__ import annotations

import os
import time

from edge.bench import Figures, Hops, WrkResult, cpu_seconds, figures, median_figures


def result(rps: float, p50: float = 1.0, p99: float = 2.0) -> WrkResult:
    return WrkResult(rps=rps, p50_ms=p50, p99_ms=p99, errors=0)


def test_cpu_seconds_counts_this_process_work() -> None:
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    # /proc counts whole clock ticks (10 ms), sampled: allow a few either way.
    assert cpu_seconds(os.getpid()) - before >= 0.1


def test_figures_are_ratios_to_the_references_measured_next_to_each_hop() -> None:
    direct1 = result(0, 0.1, 0.2)
    hops = Hops(
        lb=result(12_000),
        lb1=result(0, 0.4, 0.9),
        pop=result(27_000),
        ha=result(20_000),
        bare=result(30_000),
    )
    got = figures(direct1, hops)
    assert got.lb_ratio == 0.6
    assert round(got.added_p50_ms, 6) == 0.3
    assert round(got.added_p99_ms, 6) == 0.7
    assert got.cdn_ratio == 0.9
    without_haproxy = Hops(lb=hops.lb, lb1=hops.lb1, pop=hops.pop, ha=None, bare=hops.bare)
    assert figures(direct1, without_haproxy).lb_ratio is None


def test_medians_per_figure() -> None:
    runs = [Figures(0.5, 0.3, 0.9, 0.7), Figures(0.7, 0.2, 1.1, 0.9), Figures(0.6, 0.4, 0.8, 0.8)]
    assert median_figures(runs) == Figures(0.6, 0.3, 0.9, 0.8)
    assert result(1).cpu_text("x") == ""
    assert WrkResult(1, 1, 1, 0, cpu_us=41.6).cpu_text("PoP") == "; PoP: 42 us CPU per request"
