"""Locust really runs the shopper journeys against a small real shop; reports land on disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from load.runner import LoadPlan, LocustRun
from mesh.errors import TestbedError


async def test_closed_loop_run_writes_reports_and_passes_its_gate(
    shop_url: str, tmp_path: Path
) -> None:
    plan = LoadPlan(
        out_dir=tmp_path,
        pops={"us": shop_url, "eu": shop_url, "sa": shop_url},
        users=4,
        duration=4,
        max_error_ratio=0.01,
        max_p99_ms=2000,
    )
    run = LocustRun(plan)
    await run.start()
    code = await run.wait(within=60)
    assert code == 0, run.log_tail()
    summary = run.summary()
    assert summary["Aggregated"]["requests"] > 5
    assert summary["Aggregated"]["failures"] == 0
    assert {"storefront", "products", "product"} <= set(summary)
    assert plan.html.exists()
    assert run.stats.rows, "the live history was written"
    assert run.stats.error_ratio() == 0.0


async def test_open_loop_gate_fails_when_checkouts_fail(
    failing_shop_url: str, tmp_path: Path
) -> None:
    plan = LoadPlan(
        out_dir=tmp_path,
        pops={"us": failing_shop_url},
        users=2,
        rate=20,
        duration=4,
        checkout_weight=10,
        max_error_ratio=0.01,
    )
    run = LocustRun(plan)
    await run.start()
    code = await run.wait(within=60)
    assert code == 1, run.log_tail()
    summary = run.summary()
    assert summary["checkout"]["failures"] == summary["checkout"]["requests"] > 0
    # Open loop: about rate x duration journeys were started, however the system answered.
    journeys = summary["Aggregated"]["requests"]
    assert journeys >= 20


async def test_stopping_early_still_writes_the_reports(shop_url: str, tmp_path: Path) -> None:
    plan = LoadPlan(out_dir=tmp_path, pops={"us": shop_url}, users=2, duration=60)
    run = LocustRun(plan)
    await run.start()
    for _ in range(100):
        await asyncio.sleep(0.2)
        await run.refresh()
        if run.stats.counts()[0] > 3:
            break
    code = await run.stop()
    assert code is not None
    assert code >= 0, run.log_tail()  # exited by itself, not killed by a signal
    assert plan.html.exists()
    assert run.summary()["Aggregated"]["requests"] > 3


@pytest.mark.slow
async def test_distributed_run_with_two_workers_reports_like_one_process(
    shop_url: str, tmp_path: Path
) -> None:
    plan = LoadPlan(
        out_dir=tmp_path,
        pops={"us": shop_url, "eu": shop_url, "sa": shop_url},
        users=4,
        duration=5,
        max_error_ratio=0.01,
        max_p99_ms=2000,
        workers=2,
    )
    run = LocustRun(plan)
    await run.start()
    try:
        assert len(run.workers) == 2
        assert "--master" in run.command
        assert "--expect-workers" in run.command
        code = await run.wait(within=90)
    finally:
        await run.stop()
    assert code == 0, run.log_tail()
    assert all(w.returncode is not None for w in run.workers), "every worker stopped"
    summary = run.summary()
    assert summary["Aggregated"]["requests"] > 5
    assert summary["Aggregated"]["failures"] == 0
    assert {"storefront", "products", "product"} <= set(summary)
    assert plan.html.exists()
    assert run.stats.rows
    assert run.stats.error_ratio() == 0.0
    # The master's history counts the users of both workers.
    assert max(r.user_count for r in run.stats.rows) == 4
    assert plan.worker_log(0).exists()
    assert plan.worker_log(1).exists()


@pytest.mark.slow
async def test_stopping_a_distributed_run_stops_every_worker(shop_url: str, tmp_path: Path) -> None:
    plan = LoadPlan(out_dir=tmp_path, pops={"us": shop_url}, users=2, duration=120, workers=2)
    run = LocustRun(plan)
    await run.start()
    try:
        for _ in range(150):
            await asyncio.sleep(0.2)
            await run.refresh()
            if run.stats.counts()[0] > 3:
                break
    finally:
        await run.stop()
    assert run.proc is not None
    assert run.proc.returncode is not None
    assert all(w.returncode is not None for w in run.workers)
    assert run.summary()["Aggregated"]["requests"] > 3, run.log_tail()


def test_a_plan_refuses_more_workers_than_users(tmp_path: Path) -> None:
    with pytest.raises(TestbedError, match="at most as many workers as users"):
        LoadPlan(out_dir=tmp_path, users=2, workers=3)
