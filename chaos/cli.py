"""``testbed chaos`` (run, validate, list, rollback, report) and ``testbed load``.

Exit codes of ``chaos run``: 0 passed, 1 failed (the system deviated), 2 aborted, error or an
invalid file. ``load`` exits non-zero when its SLO gate is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from chaos.execute import find_experiment, rollback_stack, run_on_stack, shipped_experiments
from chaos.loader import ExperimentError
from chaos.localize import summary_lines
from chaos.report import write_report
from chaos.runner import RunResult
from load.cli import load
from management.cli_options import RUN_DIR_OPTION
from mesh.errors import ConfigError

__all__ = ["chaos", "load", "print_result"]


def _console() -> Console:
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=160)


@click.group()
def chaos() -> None:
    """Chaos experiments: faults under load, safeguards, rollback and a verdict."""


@chaos.command("validate")
@click.argument("files", nargs=-1, required=True)
def validate_cmd(files: tuple[str, ...]) -> None:
    """Check experiment files (or shipped names) without touching anything."""
    bad = 0
    for name in files:
        try:
            path, exp = find_experiment(name)
        except ExperimentError as exc:
            bad += 1
            click.echo(f"{name}: invalid", err=True)
            for problem in exc.problems:
                click.echo(f"  {problem}", err=True)
            continue
        except ConfigError as exc:
            bad += 1
            click.echo(f"{name}: {exc}", err=True)
            continue
        click.echo(f"{path}: ok - {exp.title}")
    sys.exit(2 if bad else 0)


@chaos.command("list")
def list_cmd() -> None:
    """The experiments shipped with the project."""
    table = Table("name", "claim", "title", "expect", "faults")
    from chaos.loader import iter_faults

    for name, (_, exp) in shipped_experiments().items():
        faults = ", ".join(sorted({s.fault.type for _, s in iter_faults(exp.method)}))
        table.add_row(name, exp.claim or "-", exp.title, exp.expect, faults)
    _console().print(table)


def print_result(console: Console, result: RunResult) -> None:
    style = {"passed": "green", "failed": "red", "aborted": "yellow", "error": "red"}
    console.print(
        f"[bold {style[result.verdict.value]}]{result.verdict.value}[/]: {result.title} "
        f"- {result.outcome}"
    )
    if result.reason and result.verdict.value != "passed":
        console.print(f"  reason: {result.reason}")
    if result.located is not None:
        console.print(f"  fault located: {result.located}")
        with contextlib.suppress(OSError, ValueError):
            section = json.loads(result.journal_path.read_text("utf-8")).get("localization")
            for line in summary_lines(section):
                console.print(f"    {line}", markup=False)
    if result.detected is not None:
        console.print(f"  detected: {result.detected}")
        with contextlib.suppress(OSError, ValueError):
            detection = json.loads(result.journal_path.read_text("utf-8")).get("detection") or {}
            for entry in detection.get("faults") or ():
                if entry.get("detected"):
                    labels = entry.get("labels") or {}
                    about = labels.get("instance") or labels.get("link") or labels.get("service")
                    console.print(
                        f"    {entry['fault']}: {entry['alert']} ({about}) after "
                        f"{entry['ttd_s']:.1f} s",
                        markup=False,
                    )
    console.print(f"  journal: {result.journal_path}")
    if result.report_path is not None:
        console.print(f"  report:  {result.report_path}")


@chaos.command("run")
@click.argument("experiment")
@RUN_DIR_OPTION
@click.option("--no-live", is_flag=True, help="No live view (plain output).")
def run_cmd(experiment: str, run_dir: Path | None, no_live: bool) -> None:
    """Run an experiment file (or a shipped one by name) against the running stack.

    Exit code 0 passed, 1 failed, 2 aborted, error or invalid.
    """
    try:
        path, exp = find_experiment(experiment)
    except ExperimentError as exc:
        click.echo("invalid experiment, nothing was started:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    console = _console()
    result = asyncio.run(
        run_on_stack(
            exp,
            source=str(path),
            run_dir=run_dir,
            console=console,
            live=not no_live and console.is_terminal,
        )
    )
    print_result(console, result)
    sys.exit(result.exit_code)


@chaos.command("report")
@click.argument("journal", type=click.Path(exists=True, path_type=Path))
def report_cmd(journal: Path) -> None:
    """(Re)render the HTML report of a run from its journal.json (or the run's folder)."""
    path = journal / "journal.json" if journal.is_dir() else journal
    try:
        click.echo(write_report(path))
    except (OSError, ValueError) as exc:
        click.echo(f"{path}: cannot render a report: {exc}", err=True)
        sys.exit(2)


@chaos.command("rollback")
@RUN_DIR_OPTION
def rollback_cmd(run_dir: Path | None) -> None:
    """Undo what a crashed runner left: toxics, frozen or stopped processes, service faults."""
    actions = asyncio.run(rollback_stack(run_dir))
    for line in actions:
        click.echo(line)
    failed = [a for a in actions if a.startswith("FAILED")]
    if not actions:
        click.echo("nothing to roll back: no fault left behind")
    sys.exit(1 if failed else 0)
