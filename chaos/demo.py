"""``testbed demo``: bring the stack up, run the shipped experiments under load, print verdicts.

Experiments that need the same system (instance counts, resilience profile, consistency mode
from their ``requires``) share one stack: the default topology is adjusted to what they need,
brought up, the experiments run one after another, and the stack is stopped before the next
group. Journals and Locust reports stay in the run folder. Each experiment's load is cut to
what its method needs, so the whole demo fits in a few minutes on two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console
from rich.table import Table

from chaos.cli import print_result
from chaos.execute import run_on_stack, shipped_experiments
from chaos.journal import Verdict
from chaos.model import (
    DeployStep,
    Experiment,
    FaultStep,
    FloodStep,
    ParallelStep,
    PauseStep,
    ScaleStep,
    SequenceStep,
    Step,
)
from chaos.report import write_demo_index
from chaos.runner import RunResult
from management.cli_options import STACKS_BASE_PORT_OPTION
from management.stack import down, up
from management.topology import Topology, load_topology
from mesh.errors import ConfigError

__all__ = ["DEMO_EXPERIMENTS", "demo", "fit_load", "method_seconds", "run_demo"]

DEMO_EXPERIMENTS = (
    "payments-latency",  # resilience: a slow instance behind deadlines and retries
    "orders-kill",  # resilience: kill -9 mid-checkout, the saga recovers, the audit passes
    "orders-kill-naive",  # data consistency: the same kill without the saga loses data
    "cdn-origin-down",  # the CDN: stale-if-error keeps the storefront up, per region
    "rate-limit-one-key",  # the API gateway: one key's flood refused, the others' p99 holds
)
"""A representative subset of the catalogue (``testbed chaos suite`` runs all of it): the
three claims most users ask about first and two of the parts, in under 5 minutes."""
LOAD_MARGIN_S = 15.0
MANAGEMENT_STEP_S = 10.0
"""What a scale or deploy step is reckoned to take when the load is cut to fit the method."""


def method_seconds(steps: list[Step]) -> float:
    """How long a method runs at least (pauses and fault durations; parallel: the longest)."""
    total = 0.0
    for step in steps:
        if isinstance(step, PauseStep):
            total += step.pause
        elif isinstance(step, FaultStep):
            total += step.fault.duration
        elif isinstance(step, ParallelStep):
            total += max(method_seconds([s]) for s in step.parallel)
        elif isinstance(step, SequenceStep):
            total += method_seconds(step.sequence)
        elif isinstance(step, FloodStep):
            total += step.flood.duration
        elif isinstance(step, DeployStep) and step.deploy.canary is not None:
            total += MANAGEMENT_STEP_S + step.deploy.canary.judge_for
        elif isinstance(step, ScaleStep | DeployStep):
            total += MANAGEMENT_STEP_S
    return total


def fit_load(exp: Experiment) -> Experiment:
    """The experiment with its load cut to warmup + method + settle + a margin."""
    if exp.load is None:
        return exp
    needed = exp.load.warmup + method_seconds(exp.method) + exp.settle + LOAD_MARGIN_S
    if needed >= exp.load.duration:
        return exp
    return exp.model_copy(update={"load": exp.load.model_copy(update={"duration": needed})})


def topology_for(base: Topology, exp: Experiment) -> Topology:
    """``base`` changed as the experiment's ``requires`` says."""
    topo = base
    for comp, count in exp.requires.instances.items():
        if topo.instance_count(comp) < count:
            topo = topo.with_instances(comp, count)
    # One consistency mode runs the whole checkout saga (the topology insists on it), so a
    # required mode is set for every service at once.
    modes = set(exp.requires.consistency.values())
    if len(modes) > 1:
        raise ConfigError(
            f"{exp.title}: requires mixes consistency modes ({', '.join(sorted(modes))}); "
            "every service runs one mode"
        )
    if modes:
        (mode,) = modes
        defaults = topo.defaults.model_copy(update={"consistency": mode})
        components = {
            name: comp.model_copy(update={"consistency": None})
            for name, comp in topo.components.items()
        }
        topo = topo.model_copy(update={"defaults": defaults, "components": components})
    updates: dict[str, dict[str, Any]] = {}
    for comp, value in exp.requires.resilience.items():
        updates.setdefault(comp, {})["resilience"] = value
    for comp, fields in updates.items():
        changed = topo.components[comp].model_copy(update=fields)
        topo = topo.model_copy(update={"components": {**topo.components, comp: changed}})
    return topo


@dataclass
class _Group:
    topology: Topology
    experiments: list[tuple[str, Experiment]]


def _groups(names: tuple[str, ...], base: Topology) -> list[_Group]:
    shipped = shipped_experiments()
    groups: list[_Group] = []
    for name in names:
        exp = fit_load(shipped[name][1])
        topo = topology_for(base, exp)
        for group in groups:
            # One stack serves both when the merged system still fits every experiment.
            merged = topology_for(group.topology, exp)
            if all(topology_for(merged, e) == merged for _, e in group.experiments):
                group.topology = merged
                group.experiments.append((name, exp))
                break
        else:
            groups.append(_Group(topo, [(name, exp)]))
    return groups


def _prepare(run_dir: Path, index: int, topology: Topology) -> tuple[Path, Path]:
    """The group's run folder and its topology file (written for the record and for ``up``)."""
    stack_dir = run_dir / f"stack-{index}"
    stack_dir.mkdir(parents=True, exist_ok=True)
    topo_file = run_dir / f"topology-{index}.yaml"
    topo_file.write_text(yaml.safe_dump(topology.to_data(), sort_keys=False))
    return stack_dir, topo_file


async def run_demo(
    run_dir: Path,
    console: Console,
    *,
    names: tuple[str, ...] = DEMO_EXPERIMENTS,
    base_port: int | None = None,
    live: bool = True,
) -> list[RunResult]:
    """Run the demo; returns one result per experiment. Stops every stack it started."""
    results: list[RunResult] = []
    base = load_topology(None)
    for index, group in enumerate(_groups(names, base), start=1):
        stack_dir, topo_file = await asyncio.to_thread(_prepare, run_dir, index, group.topology)
        console.rule(f"stack {index}: {', '.join(n for n, _ in group.experiments)}")
        started = time.monotonic()
        stack = await up(
            topology=topo_file,
            run_dir=stack_dir,
            base_port=base_port,
            jaeger=False,
            trace_ui=False,  # each group's stack is gone once its reports are written
            progress=lambda m: console.print(f"  {m}", style="dim"),
        )
        try:
            console.print(f"  stack up in {time.monotonic() - started:.1f} s")
            for name, exp in group.experiments:
                console.rule(f"{name}: {exp.title}", style="cyan")
                result = await run_on_stack(
                    exp, source=name, run_dir=stack.run_dir, console=console, live=live
                )
                print_result(console, result)
                results.append(result)
        finally:
            console.print("  stopping the stack", style="dim")
            with contextlib.suppress(Exception):
                await asyncio.to_thread(down, stack.run_dir)
    return results


def summary_table(results: list[RunResult]) -> Table:
    table = Table(
        "experiment",
        "verdict",
        "outcome",
        "error ratio",
        "p99",
        "audit",
        "fault located",
        "detected",
    )
    for r in results:
        ok = "green" if r.as_expected else "red"
        verdict = r.verdict.value
        table.add_row(
            r.source or r.title,
            f"[{ok}]{verdict}[/]",
            r.outcome if r.verdict in (Verdict.PASSED, Verdict.FAILED) else (r.reason or ""),
            "-" if r.error_ratio is None else f"{r.error_ratio:.2%}",
            "-" if r.p99_ms is None else f"{r.p99_ms:.0f} ms",
            r.audit or "-",
            r.located or "n/a",
            r.detected or "n/a",
        )
    return table


def detection_line(results: list[RunResult]) -> str:
    """The median time to detect over every fault of the run (the alerts' goal: <= 5 s)."""
    ttds = [t for r in results for t in r.ttd_s]
    found = sorted(t for t in ttds if t is not None)
    if not found:
        return f"time to detect: no fault detected by an alert ({len(ttds)} faults)"
    return (
        f"time to detect: median {statistics.median(found):.1f} s, max {found[-1]:.1f} s, "
        f"{len(found)}/{len(ttds)} faults detected by an alert"
    )


@click.command()
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where journals and reports go (default: runs/demo-<timestamp>).",
)
@STACKS_BASE_PORT_OPTION
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(DEMO_EXPERIMENTS),
    help="Run only these experiments (repeatable).",
)
def demo(run_dir: Path | None, base_port: int | None, only: tuple[str, ...]) -> None:
    """Bring the stack up, run the shipped experiments under load, print the verdicts."""
    console = Console(highlight=False)
    folder = (run_dir or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")).resolve()
    started = time.monotonic()
    results = asyncio.run(
        run_demo(
            folder,
            console,
            names=only or DEMO_EXPERIMENTS,
            base_port=base_port,
            live=console.is_terminal,
        )
    )
    # Never squeezed into a narrow terminal or a pipe: the table is the demo's result.
    console.width = max(console.width, 120)
    console.print(summary_table(results))
    console.print(detection_line(results))
    try:
        console.print(f"reports: {write_demo_index(folder, results)}")
    except OSError as exc:  # the index informs; the verdicts above stand
        console.print(f"no demo index: {exc}", style="yellow")
    console.print(f"journals and Locust reports: {folder} ({time.monotonic() - started:.0f} s)")
    raise SystemExit(0 if results and all(r.as_expected for r in results) else 1)
