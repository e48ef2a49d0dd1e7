"""``testbed audit``: check that orders, payments and reservations agree; exit 0 or 1.

The lead wires the ``audit`` command object into ``management.cli``. Where the services are:
``--orders/--inventory/--payments/--catalog`` (``host:port`` or URL, each also from an
environment variable), else ``TESTBED_UPSTREAMS`` (the static discovery format,
``svc=host:port;...``), else the stack that ``testbed up`` started (``--run-dir`` or the current
one): the audit then reads each service's first instance directly, not through Toxiproxy, so an
injected network fault cannot hide the data.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from mesh.errors import ConfigError
from mesh.process import ProcessConfig
from services.audit import run_audit_at
from services.audit_checks import AuditReport


def _stack_addresses(run_dir: Path | None) -> dict[str, str]:
    """First instance of each service in the running stack (``{}`` when no stack is up)."""
    from management.stack import current_run_dir, open_stack

    if run_dir is None and current_run_dir() is None:
        return {}
    stack = open_stack(run_dir)
    found: dict[str, str] = {}
    for inst in stack.plan.instances:
        # A monolith serves each service it hosts at its own address.
        for service in stack.plan.topology.services_of(inst.component):
            if service in _AUDITED and service not in found:
                found[service] = inst.address
    return found


_AUDITED = ("orders", "inventory", "payments", "catalog")


def _addresses(options: dict[str, str | None], run_dir: Path | None) -> dict[str, str]:
    upstreams = ProcessConfig.from_env("audit", os.environ).upstreams
    addresses: dict[str, str] = {}
    for name, given in options.items():
        if given:
            addresses[name] = given
        elif upstreams.get(name):
            addresses[name] = upstreams[name][0]
    if run_dir is not None or any(n not in addresses for n in _AUDITED):
        for name, address in _stack_addresses(run_dir).items():
            addresses.setdefault(name, address)
    missing = [n for n in ("orders", "inventory", "payments") if n not in addresses]
    if missing:
        raise ConfigError(
            f"where is {', '.join(missing)}? start the stack with `testbed up`, or pass "
            f"--{missing[0]} host:port (or set TESTBED_UPSTREAMS)"
        )
    return addresses


def render(report: AuditReport, console: Console) -> None:
    table = Table(title="data audit", title_justify="left")
    table.add_column("check")
    table.add_column("checked", justify="right")
    table.add_column("result")
    table.add_column("first violations")
    for check in report.checks:
        shown = "; ".join(f"{v.subject}: {v.message}" for v in check.violations[:3])
        more = len(check.violations) - 3
        if more > 0:
            shown += f" (+{more} more)"
        table.add_row(
            check.title,
            str(check.checked),
            "[green]ok[/]" if check.ok else f"[red]{len(check.violations)} violation(s)[/]",
            shown,
        )
    console.print(table)
    if report.counts:
        console.print("  ".join(f"{k}={v}" for k, v in report.counts.items()))
    for error in report.errors:
        console.print(f"[red]could not audit[/] {error}")
    console.print("[bold green]PASS[/]" if report.ok else "[bold red]FAIL[/]")


@click.command("audit")
@click.option("--orders", envvar="TESTBED_AUDIT_ORDERS", help="orders at host:port or URL")
@click.option("--inventory", envvar="TESTBED_AUDIT_INVENTORY", help="inventory at host:port")
@click.option("--payments", envvar="TESTBED_AUDIT_PAYMENTS", help="payments at host:port")
@click.option("--catalog", envvar="TESTBED_AUDIT_CATALOG", help="catalog (optional)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--deadline", default=15.0, show_default=True, help="seconds for the whole audit")
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="audit the stack of this run folder (default: the current stack)",
)
def audit(
    orders: str | None,
    inventory: str | None,
    payments: str | None,
    catalog: str | None,
    as_json: bool,
    deadline: float,
    run_dir: Path | None,
) -> None:
    """Check that orders, payments and stock agree; exit 0 when every check holds, else 1.

    Stock conserved; every confirmed order paid once for its total with its items committed;
    every failed order refunded with nothing held; nothing pending past the saga timeout; no
    charge or reservation for an unknown order; no order charged twice.
    """
    addresses = _addresses(
        {"orders": orders, "inventory": inventory, "payments": payments, "catalog": catalog},
        run_dir,
    )
    report = asyncio.run(run_audit_at(addresses, deadline_seconds=deadline))
    if as_json:
        data = report.model_dump(mode="json")
        data["ok"] = report.ok
        click.echo(json.dumps(data, indent=2))
    else:
        render(report, Console())
    sys.exit(0 if report.ok else 1)
