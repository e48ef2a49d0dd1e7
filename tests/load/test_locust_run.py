"""Locust really runs the shopper journeys against a small real shop; reports land on disk."""

from __future__ import annotations

from pathlib import Path

from load.runner import LoadPlan, LocustRun


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
    import asyncio

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
