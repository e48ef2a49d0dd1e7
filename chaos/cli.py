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
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from chaos.execute import find_experiment, rollback_stack, run_on_stack, shipped_experiments
from chaos.loader import ExperimentError
from chaos.localize import summary_lines
from chaos.report import write_report
from chaos.runner import RunResult
from load.cli import load
from management.cli_options import RUN_DIR_OPTION, STACKS_BASE_PORT_OPTION
from mesh.errors import ConfigError, TestbedError

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


@chaos.command("export")
@click.argument("experiment")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write here (default: standard output).",
)
def export_cmd(experiment: str, out: Path | None) -> None:
    """Write an experiment (file or shipped name) as a Chaos Toolkit experiment (JSON).

    Run it with the Chaos Toolkit against the stack `testbed up` started:
    `chaos validate F.json` and `chaos run F.json` (TESTBED_RUN_DIR picks another stack).
    """
    from chaos.ctk.export import export_experiment

    try:
        path, exp = find_experiment(experiment)
    except ExperimentError as exc:
        click.echo("invalid experiment, nothing was written:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    name = path.stem if path.suffix in (".yaml", ".yml") else experiment
    text = json.dumps(export_experiment(exp, name=name), indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        click.echo(f"cannot write {out}: {exc.strerror}", err=True)
        sys.exit(2)
    click.echo(f"{out}: Chaos Toolkit experiment from {path}")


@chaos.command("report")
@click.argument("journal", type=click.Path(exists=True, path_type=Path))
def report_cmd(journal: Path) -> None:
    """(Re)render the HTML report of a run from its journal.json (or the run's folder)."""
    path = journal / "journal.json" if journal.is_dir() else journal
    try:
        if json.loads(path.read_text("utf-8")).get("source") == "soak":
            from chaos.soak.report import write_soak_report

            click.echo(write_soak_report(path))
            return
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


@chaos.command("rca-bench")
@click.option("--seed", type=int, default=14, show_default=True, help="Picks instances and gaps.")
@click.option("--quick", is_flag=True, help="A handful of cases on one stack (a smoke test).")
@click.option("--case", "only", multiple=True, help="Run only this case (repeatable).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The bench folder (default: runs/rca-bench-<timestamp>).",
)
@click.option(
    "--rescore",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Localise and score a finished bench folder again; runs nothing.",
)
@STACKS_BASE_PORT_OPTION
def rca_bench_cmd(
    seed: int,
    quick: bool,
    only: tuple[str, ...],
    out: Path | None,
    rescore: Path | None,
    base_port: int | None,
) -> None:
    """Run the fault catalogue on fresh stacks; localise each fault blind; AC@1/AC@3/Avg@5."""
    import time

    from chaos.rcabench import FULL, SMOKE, bench_cases, run_bench, score_bench

    def progress(line: str) -> None:
        click.echo(line)

    try:
        if rescore is not None:
            result = score_bench(rescore, progress=progress)
        else:
            cases = bench_cases(quick=quick, only=only)
            folder = (out or Path("runs") / time.strftime("rca-bench-%Y%m%d-%H%M%S")).resolve()
            click.echo(f"{len(cases)} cases, seed {seed}, folder {folder}")
            result = asyncio.run(
                run_bench(
                    folder,
                    cases,
                    seed=seed,
                    base_port=base_port,
                    progress=progress,
                    timing=SMOKE if quick else FULL,
                )
            )
    except (ValueError, ConfigError) as exc:
        click.echo(f"rca-bench: {exc}", err=True)
        sys.exit(2)
    _console().print(bench_table(result["summary"]))
    for miss in result["summary"]["missed"]:
        click.echo(
            f"not ranked first: {miss['case']} (truth {miss['truth']}, rank {miss['rank']}): "
            f"{miss.get('why') or ''}"
        )
    click.echo(f"results: {Path(result['folder']) / 'rca-bench.json'}")


def bench_table(summary: dict[str, Any]) -> Table:
    table = Table("fault type", "cases", "AC@1", "AC@3", "Avg@5", "median detect")
    rows = [*summary["by_type"].items(), ("overall", summary["overall"])]
    for name, row in rows:
        detect = row["median_detect_s"]
        table.add_row(
            name,
            str(row["cases"]),
            f"{row['ac1']:.2f}",
            f"{row['ac3']:.2f}",
            f"{row['avg5']:.2f}",
            "-" if detect is None else f"{detect:.1f} s",
        )
    return table


@chaos.command("soak")
@click.option("--seed", type=int, default=1, show_default=True, help="Seeds faults and clients.")
@click.option(
    "--duration",
    type=click.FloatRange(min=20.0, max=24 * 3600.0),
    default=180.0,
    show_default=True,
    help="Seconds of checkouts under faults.",
)
@click.option("--clients", type=click.IntRange(1, 200), default=12, show_default=True)
@click.option(
    "--converge-within",
    type=click.FloatRange(min=1.0),
    default=30.0,
    show_default=True,
    help="Seconds after the last fault by which every saga must be over.",
)
@RUN_DIR_OPTION
def soak_cmd(
    seed: int, duration: float, clients: int, converge_within: float, run_dir: Path | None
) -> None:
    """Nemesis soak: kill, freeze and cut random instances of every service under checkouts
    with retries and duplicate keys; then check convergence and the clients' view.

    Exit code 0 no violation, 1 violations, 2 could not run.
    """
    from chaos.soak.clients import ClientSettings
    from chaos.soak.run import SoakSettings, run_soak

    settings = SoakSettings(
        seed=seed,
        duration=duration,
        converge_within=converge_within,
        clients=ClientSettings(clients=clients),
    )
    try:
        result = asyncio.run(
            run_soak(settings, run_dir=run_dir, progress=lambda m: click.echo(m, err=False))
        )
    except TestbedError as exc:  # a bad setting, or another experiment on the stack
        click.echo(f"cannot run the soak: {exc}", err=True)
        sys.exit(2)
    s = result.summary
    c = s.get("clients") or {}
    click.echo(
        f"checkouts {c.get('checkouts', 0)} ({c.get('requests', 0)} requests, retries"
        f" {c.get('retries', 0)}, duplicates {c.get('duplicates', 0)}): told confirmed"
        f" {c.get('confirmed', 0)}, failed {c.get('failed', 0)}, pending {c.get('pending', 0)},"
        f" unanswered {c.get('unanswered', 0)}"
    )
    faults = ", ".join(f"{k} {v}" for k, v in (s.get("faults") or {}).items()) or "none"
    comps = ", ".join(
        f"{comp} ({'/'.join(f'{k[0]}{v}' for k, v in counts.items())})"
        for comp, counts in (s.get("faults_by_component") or {}).items()
    )
    click.echo(f"faults: {faults}; by component: {comps}")
    took = s.get("convergence_s")
    click.echo(
        "convergence: "
        + (
            "not measured"
            if "convergence_s" not in s
            else ("never" if took is None else f"{took:.1f} s")
        )
        + f" (bound {s.get('convergence_bound_s', converge_within):g} s);"
        " instances not ready at the end: "
        + ("n/a" if s.get("not_ready") is None else str(len(s["not_ready"])))
        + ";"
        f" confirmations missing: {s.get('missing_confirmations', 'n/a')}"
    )
    if result.error:
        click.echo(f"error: {result.error}", err=True)
    click.echo(f"violations: {len(result.violations)}")
    for line in result.violations[:20]:
        click.echo(f"  {line}")
    click.echo(f"journal: {result.journal_path}")
    if result.report_path is not None:
        click.echo(f"report:  {result.report_path}")
    sys.exit(result.exit_code)
