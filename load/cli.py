"""``testbed load``: Locust headless against the running stack, with progress and an SLO gate."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import click
from rich.console import Console

from load.runner import MAX_WORKERS, LoadPlan, LocustRun
from load.shapes import SHAPES, ShapeName
from management.cli_options import RUN_DIR_OPTION
from mesh.errors import TestbedError

__all__ = ["load", "run_load"]


async def run_load(plan: LoadPlan, console: Console) -> tuple[int, dict[str, dict[str, float]]]:
    """Run ``plan`` showing one progress line a few times a second; (exit code, summary)."""
    run = LocustRun(plan)
    await run.start()
    try:
        starting = (
            f"starting Locust (a master and {plan.workers} workers)"
            if plan.workers
            else "starting Locust"
        )
        with console.status(starting) as status:
            while run.running:
                await asyncio.sleep(1.0)
                await run.refresh()
                s = run.stats
                latest = s.latest_timestamp()
                ratio = s.error_ratio(since=latest - 5) if latest is not None else None
                p99 = s.current_percentile("99%")
                elapsed = time.time() - (run.started_at or time.time())
                status.update(
                    f"{elapsed:4.0f}/{plan.duration:.0f}s  users {s.user_count()}  "
                    f"rps {s.current_rps() or 0:.1f}  "
                    f"errors {'-' if ratio is None else f'{ratio * 100:.2f}%'}  "
                    f"p99 {'-' if p99 is None else f'{p99:.0f} ms'}"
                )
        code = await run.wait(within=30)
    finally:
        await run.stop()
    return code, run.summary()


@click.command()
@click.option("--users", type=click.IntRange(1, 5000), default=10, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Open loop: journeys per second (constant arrival rate).",
)
@click.option(
    "--duration", type=click.FloatRange(min=1), default=60.0, show_default=True, help="Seconds."
)
@click.option("--shape", type=click.Choice(SHAPES), default="steady", show_default=True)
@click.option("--spawn-rate", type=click.FloatRange(min=0.1), default=20.0, show_default=True)
@click.option("--checkout-weight", type=click.IntRange(0, 100), default=2, show_default=True)
@click.option(
    "--max-error-ratio",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="SLO gate: exit 1 above this error ratio.",
)
@click.option(
    "--max-p99-ms",
    type=click.FloatRange(min=1),
    default=2000.0,
    show_default=True,
    help="SLO gate: exit 1 above this p99.",
)
@click.option(
    "--workers",
    type=click.IntRange(0, MAX_WORKERS),
    default=0,
    show_default=True,
    help="Run Locust distributed: a master and this many worker processes (0: one process).",
)
@RUN_DIR_OPTION
def load(
    users: int,
    rate: float | None,
    duration: float,
    shape: ShapeName,
    spawn_rate: float,
    checkout_weight: int,
    max_error_ratio: float,
    max_p99_ms: float,
    workers: int,
    run_dir: Path | None,
) -> None:
    """Run shoppers (Locust, headless) against the running stack; reports go to the run folder."""
    from chaos.stack import from_management
    from management.stack import open_stack

    console = Console(highlight=False)
    stack = open_stack(run_dir)
    info = asyncio.run(from_management(stack))
    out = info.run_dir / "load" / time.strftime("%Y%m%d-%H%M%S")
    plan = LoadPlan(
        out_dir=out,
        pops=info.pops(),
        host=info.urls.get("balancer"),
        users=users,
        spawn_rate=spawn_rate,
        rate=rate,
        shape=shape,
        duration=duration,
        api_key=info.api_key or "demo-key",
        checkout_weight=checkout_weight,
        max_error_ratio=max_error_ratio,
        max_p99_ms=max_p99_ms,
        workers=workers,
    )
    if not plan.pops and not plan.host:
        raise TestbedError("the stack has no CDN PoP and no balancer to send load to")
    code, summary = asyncio.run(run_load(plan, console))
    agg = summary.get("Aggregated", {})
    for name, row in sorted(summary.items()):
        console.print(
            f"  {name:<16} {int(row.get('requests', 0)):>7} req  "
            f"{row.get('error_ratio') or 0:.2%} errors  p99 {row.get('p99', 0):.0f} ms"
        )
    verdict = "[green]SLO met[/]" if code == 0 else "[red]SLO missed[/]"
    console.print(
        f"{verdict}: error ratio {agg.get('error_ratio') or 0:.2%} (max {max_error_ratio:.2%}), "
        f"p99 {agg.get('p99', 0):.0f} ms (max {max_p99_ms:.0f} ms)"
    )
    console.print(f"  reports: {plan.html} and {plan.prefix}_*.csv")
    sys.exit(code)
