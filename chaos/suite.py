"""``testbed chaos suite`` and ``testbed chaos compare``: many runs, each on a fresh stack.

The suite runs the whole catalogue (or ``--only`` some of it), one fresh stack per experiment
(the default topology changed as the experiment's ``requires`` says), prints progress and a
table, and writes ``suite.html`` with one row per experiment and the claim it demonstrates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console
from rich.table import Table

from chaos.compare import STACK_READY_S, parse_variant, run_compare
from chaos.execute import find_experiment, shipped_experiments
from chaos.loader import ExperimentError
from chaos.model import CLAIMS, PARTS
from chaos.runner import RunResult
from management.cli_options import STACKS_BASE_PORT_OPTION
from mesh.errors import ConfigError, TestbedError

__all__ = ["compare", "run_suite", "suite"]


def _folder(run_dir: Path | None, prefix: str) -> Path:
    return (run_dir or Path("runs") / time.strftime(f"{prefix}-%Y%m%d-%H%M%S")).resolve()


def catalogue_order(names: list[str]) -> list[str]:
    """Experiments in the order of the claims, then the parts, then by name."""
    shipped = shipped_experiments()
    order = {c: i for i, c in enumerate((*CLAIMS, *PARTS))}
    return sorted(names, key=lambda n: (order.get(shipped[n][1].claim or "", 99), n))


async def run_suite(
    names: list[str], folder: Path, console: Console, *, base_port: int | None = None
) -> list[dict[str, Any]]:
    """Run each experiment on its own fresh stack; one entry per experiment."""
    from chaos.cli import print_result
    from chaos.demo import fit_load, topology_for
    from chaos.execute import run_on_stack
    from management.stack import down, up
    from management.topology import load_topology

    shipped = shipped_experiments()
    base = load_topology(None)
    entries: list[dict[str, Any]] = []
    for index, name in enumerate(names, start=1):
        exp = fit_load(shipped[name][1])
        entry: dict[str, Any] = {"name": name, "claim": exp.claim, "title": exp.title}
        console.rule(f"[{index}/{len(names)}] {name} ({exp.claim or 'no claim'}): {exp.title}")
        stack_dir = folder / f"{index:02d}-{name}"
        started = time.monotonic()
        try:
            topo = topology_for(base, exp)
            await asyncio.to_thread(stack_dir.mkdir, parents=True, exist_ok=True)
            topo_file = stack_dir / "topology.yaml"
            await asyncio.to_thread(
                topo_file.write_text, yaml.safe_dump(topo.to_data(), sort_keys=False)
            )
            stack = await up(
                topology=topo_file,
                run_dir=stack_dir / "stack",
                base_port=base_port,
                jaeger=False,
                progress=lambda m: console.print(f"  {m}", style="dim"),
                within=STACK_READY_S,
            )
        except (ConfigError, TestbedError, OSError) as exc:
            entry["error"] = f"stack did not start: {exc}"
            console.print(f"  {entry['error']}", style="red")
            entries.append(entry)
            continue
        try:
            result: RunResult = await run_on_stack(
                exp, source=name, run_dir=stack.run_dir, console=console, live=False
            )
            entry["result"] = result
            print_result(console, result)
        except (ConfigError, TestbedError) as exc:
            entry["error"] = str(exc)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(down, stack.run_dir)
        console.print(f"  {name}: {time.monotonic() - started:.0f} s with its stack", style="dim")
        entries.append(entry)
    return entries


def suite_table(entries: list[dict[str, Any]]) -> Table:
    table = Table("claim", "experiment", "verdict", "outcome", "error ratio", "p99", "audit")
    for e in entries:
        r: RunResult | None = e.get("result")
        if r is None:
            table.add_row(
                e["claim"] or "-", e["name"], "[red]error[/]", e.get("error", ""), "-", "-", "-"
            )
            continue
        ok = "green" if r.as_expected else "red"
        table.add_row(
            e["claim"] or "-",
            e["name"],
            f"[{ok}]{r.verdict.value}[/]",
            r.outcome if r.verdict.value in ("passed", "failed") else (r.reason or ""),
            "-" if r.error_ratio is None else f"{r.error_ratio:.2%}",
            "-" if r.p99_ms is None else f"{r.p99_ms:.0f} ms",
            r.audit or "-",
        )
    return table


@click.command("suite")
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where journals, reports and suite.html go (default: runs/suite-<time>).",
)
@STACKS_BASE_PORT_OPTION
@click.option("--only", multiple=True, help="Run only these shipped experiments (repeatable).")
def suite(run_dir: Path | None, base_port: int | None, only: tuple[str, ...]) -> None:
    """Run the whole catalogue, each experiment on a fresh stack; write suite.html."""
    shipped = shipped_experiments()
    unknown = [n for n in only if n not in shipped]
    if unknown:
        raise click.BadParameter(
            f"{', '.join(unknown)}: not shipped experiments (known: {', '.join(shipped)})",
            param_hint="--only",
        )
    names = catalogue_order(list(only or shipped))
    console = Console(highlight=False)
    folder = _folder(run_dir, "suite")
    started = time.monotonic()
    entries = asyncio.run(run_suite(names, folder, console, base_port=base_port))
    from chaos.pages import write_suite_index

    console.width = max(console.width, 140)
    console.print(suite_table(entries))
    seconds = time.monotonic() - started
    console.print(f"index: {write_suite_index(folder, entries, seconds=seconds)} ({seconds:.0f} s)")
    ok = all(e.get("result") is not None and e["result"].as_expected for e in entries)
    raise SystemExit(0 if entries and ok else 1)


@click.command("compare")
@click.argument("experiment")
@click.option(
    "--variant",
    "variants",
    multiple=True,
    required=True,
    help="NAME:KEY=VALUE[,KEY=VALUE] (resilience.<c>=none|basic|full, "
    "consistency=saga|naive, instances.<c>=N, topology=FILE, env.<c>.<NAME>=VALUE);"
    " give two or more.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the variants' runs and compare.html go (default: runs/compare-<time>).",
)
@STACKS_BASE_PORT_OPTION
def compare(
    experiment: str, variants: tuple[str, ...], run_dir: Path | None, base_port: int | None
) -> None:
    """Run one experiment under several settings, each on a fresh stack; write compare.html."""
    try:
        path, exp = find_experiment(experiment)
        parsed = [parse_variant(v) for v in variants]
    except ExperimentError as exc:
        raise click.UsageError("invalid experiment:\n  " + "\n  ".join(exc.problems)) from None
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if len({v.name for v in parsed}) != len(parsed):
        raise click.UsageError("each --variant needs its own name")
    console = Console(highlight=False)
    folder = _folder(run_dir, "compare")
    _, page = asyncio.run(
        run_compare(
            experiment if path.stem == experiment else str(path),
            exp,
            parsed,
            folder,
            console,
            base_port=base_port,
        )
    )
    console.print(f"comparison: {page}")
