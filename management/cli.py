"""The ``testbed`` command line.

Subcommands are registered here from the modules that implement them; each keeps its logic in a
typed function that tests (and the chaos engine) can call without going through the CLI.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from management import __version__
from management.cli_options import RUN_DIR_OPTION, TOPOLOGY_OPTION
from mesh.errors import TestbedError

if TYPE_CHECKING:
    from management.stack import Stack


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="testbed")
def cli() -> None:
    """A chaos and observability testbed for microservice architectures.

    It runs a real microservice system on one machine (services with their own databases, an
    API gateway, a load balancer, CDN edge caches, a management plane), instruments every hop
    with OpenTelemetry traces and Prometheus metrics, and lets you break it on purpose.
    """


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    return console


def _say(message: str) -> None:
    click.echo(f"  {message}", err=True)


@cli.command()
@TOPOLOGY_OPTION
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run folder for logs, data, traces (default: runs/<timestamp>).",
)
@click.option(
    "--base-port",
    type=click.IntRange(1024, 65000),
    default=None,
    envvar="TESTBED_BASE_PORT",
    help="First port of the stack's range (default 20000; env TESTBED_BASE_PORT).",
)
@click.option("--foreground", is_flag=True, help="Stay attached; Ctrl-C stops everything.")
@click.option(
    "--timeout",
    "within",
    type=click.FloatRange(1, 600),
    default=90.0,
    show_default=True,
    help="Seconds to wait for every instance to be ready.",
)
@click.option(
    "--trace-ui/--no-trace-ui",
    default=None,
    help="Start Zipkin and its span shipper, the trace UI (default: when `make setup` fetched "
    "it; it adds about 160 MB, see the README).",
)
def up(
    topology: Path | None,
    run_dir: Path | None,
    base_port: int | None,
    foreground: bool,
    within: float,
    trace_ui: bool | None,
) -> None:
    """Start the whole system (supervised processes, Toxiproxy, Prometheus) and wait until ready."""
    from management.stack import up as stack_up

    started = time.monotonic()
    click.echo("testbed up", err=True)
    stack = asyncio.run(
        stack_up(
            topology=topology,
            run_dir=run_dir,
            base_port=base_port,
            trace_ui=trace_ui,
            progress=_say,
            within=within,
        )
    )
    click.echo(
        f"all {len(stack.plan.instances)} instances ready in {time.monotonic() - started:.1f}s"
    )
    for name, where in stack.where():
        click.echo(f"  {name:<16} {where}")
    if not foreground:
        click.echo("stop it with `testbed down`")
        return
    click.echo("running in the foreground; Ctrl-C stops everything")
    _wait_for_interrupt()
    from management.stack import down as stack_down

    stack_down(stack.run_dir, progress=_say)
    click.echo("stopped")


def _wait_for_interrupt() -> None:
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        while not received:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fmt_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


@cli.command()
@RUN_DIR_OPTION
def status(run_dir: Path | None) -> None:
    """Every instance: state, pid, address, version, uptime, restarts, ready, registered."""
    from management.stack import open_stack

    stack = open_stack(run_dir)
    rows = asyncio.run(stack.status())
    table = Table(title=f"testbed stack in {stack.run_dir}")
    for column in (
        "instance",
        "state",
        "pid",
        "address",
        "version",
        "uptime",
        "restarts",
        "ready",
        "registered",
    ):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.instance,
            row.state,
            str(row.pid or "-"),
            row.address,
            row.version,
            _fmt_uptime(row.uptime_seconds),
            str(row.restarts),
            _yes_no(row.ready),
            _yes_no(row.registered),
        )
    _console().print(table)
    for row in rows:
        if row.ready is False and row.not_ready_reason:
            _console().print(f"{row.instance} not ready: {row.not_ready_reason}", markup=False)


@cli.command()
@click.argument("assignment", metavar="SERVICE=N")
@RUN_DIR_OPTION
def scale(assignment: str, run_dir: Path | None) -> None:
    """Run N instances of SERVICE, live (removed instances are drained first)."""
    from management.stack import open_stack

    name, sep, raw = assignment.partition("=")
    if not sep or not raw.isdigit():
        raise click.BadParameter(f"{assignment!r} is not SERVICE=N", param_hint="SERVICE=N")
    stack = open_stack(run_dir, progress=_say)
    started = time.monotonic()
    added, removed = asyncio.run(stack.scale(name, int(raw)))
    changes = [f"+{a}" for a in added] + [f"-{r}" for r in removed]
    click.echo(
        f"{name}: {len(stack.plan.of(name))} instances "
        f"({', '.join(changes) or 'no change'}) in {time.monotonic() - started:.1f}s"
    )


class _Seconds(click.ParamType[float]):
    """A duration: ``30``, ``30s``, ``500ms``, ``2m``."""

    name = "DURATION"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        from chaos.model import parse_duration

        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_CANARY_ONLY = ("share", "judge_for", "max_error_ratio_increase", "max_p99_ratio", "min_requests")


@cli.command()
@click.argument("service")
@click.option("--version", "version", default=None, help="The version to roll out.")
@click.option(
    "--canary",
    is_flag=True,
    help="One extra instance at VERSION takes --share of the traffic, is judged against the old "
    "version, then promoted (rolling deploy) or rolled back. RPC services only (catalog, "
    "recommendations, inventory, payments, orders).",
)
@click.option(
    "--share",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="--canary: the share of the service's traffic the canary gets.",
)
@click.option(
    "--judge-for",
    type=_Seconds(),
    default=30.0,
    show_default=True,
    help="--canary: how long to judge it (30, 30s, 2m).",
)
@click.option(
    "--max-error-ratio-increase",
    type=click.FloatRange(0, 1),
    default=0.02,
    show_default=True,
    help="--canary: roll back when its error ratio (5xx) exceeds the old one's by more (absolute).",
)
@click.option(
    "--max-p99-ratio",
    type=click.FloatRange(1, 100),
    default=1.5,
    show_default=True,
    help="--canary: roll back when its p99 exceeds the old one's (at least 10 ms) times this.",
)
@click.option(
    "--min-requests",
    type=click.IntRange(1, 1_000_000),
    default=20,
    show_default=True,
    help="--canary: fewer requests on either version is inconclusive (rolled back).",
)
@click.option(
    "--promote-inconclusive",
    is_flag=True,
    help="--canary: promote when the traffic was too little to judge (default: roll back).",
)
@click.option(
    "--abort-canary",
    is_flag=True,
    help="Remove a canary of SERVICE left running (e.g. by a killed command); nothing else.",
)
@RUN_DIR_OPTION
@click.pass_context
def deploy(
    ctx: click.Context,
    service: str,
    version: str | None,
    canary: bool,
    share: float,
    judge_for: float,
    max_error_ratio_increase: float,
    max_p99_ratio: float,
    min_requests: int,
    promote_inconclusive: bool,
    abort_canary: bool,
    run_dir: Path | None,
) -> None:
    """Rolling deploy: one instance at a time, drained, restarted with VERSION, ready again
    (a balancer or CDN PoP: handed over on its port to VERSION, no connection refused).

    With --canary: one instance of VERSION beside the old ones, judged from Prometheus (error
    ratio and p99 per version over the window), then promoted or rolled back automatically.
    Exit code 0 when promoted, 1 when rolled back (worse, or too little traffic).
    """
    from management.stack import open_stack

    if not canary:
        given = [
            f"--{name.replace('_', '-')}"
            for name in (*_CANARY_ONLY, "promote_inconclusive")
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            raise click.UsageError(f"{', '.join(given)} apply only with --canary")
    stack = open_stack(run_dir, progress=_say)
    if abort_canary:
        seconds = asyncio.run(stack.remove_canary(service))
        click.echo(
            f"removed the canary of {service} in {seconds:.1f}s"
            if seconds
            else f"{service} has no canary"
        )
        return
    if version is None:
        raise click.UsageError("give the version to roll out: --version V")
    if canary:
        _canary(
            stack,
            service,
            version,
            share=share,
            judge_for=judge_for,
            max_error_ratio_increase=max_error_ratio_increase,
            max_p99_ratio=max_p99_ratio,
            min_requests=min_requests,
            promote_inconclusive=promote_inconclusive,
        )
        return
    seconds = asyncio.run(stack.deploy(service, version))
    click.echo(
        f"{service} is at {version} on {len(stack.plan.of(service))} instances; "
        f"rolling deploy took {seconds:.1f}s"
    )


def _canary(
    stack: Stack,
    service: str,
    version: str,
    *,
    share: float,
    judge_for: float,
    max_error_ratio_increase: float,
    max_p99_ratio: float,
    min_requests: int,
    promote_inconclusive: bool,
) -> None:
    from management.canary import Thresholds

    result = asyncio.run(
        stack.canary(
            service,
            version,
            share=share,
            judge_for=judge_for,
            thresholds=Thresholds(
                min_requests=min_requests,
                max_error_ratio_increase=max_error_ratio_increase,
                max_p99_ratio=max_p99_ratio,
            ),
            promote_inconclusive=promote_inconclusive,
        )
    )
    verdict = result.judgement
    observed = "n/a" if verdict.share is None else f"{verdict.share:.1%}"
    table = Table(
        title=f"canary {result.instance_id} ({version}), judged {result.judged_seconds:.0f}s"
    )
    for column in ("version", "requests", "error ratio", "p99"):
        table.add_column(column)
    for side in (verdict.new, verdict.old):
        ratio = "n/a" if side.error_ratio is None else f"{side.error_ratio:.2%}"
        p99 = "n/a" if side.p99_seconds is None else f"{side.p99_seconds * 1000:.0f} ms"
        table.add_row(side.version, f"{side.requests:.0f}", ratio, p99)
    _console().print(table)
    click.echo(f"canary share observed: {observed} (asked {share:.0%})")
    click.echo(f"verdict: {verdict.decision}: {'; '.join(verdict.reasons)}")
    if result.action == "promoted":
        click.echo(
            f"{service} promoted to {version}: rolling deploy of the old instances took "
            f"{result.deploy_seconds or 0:.1f}s; canary removed"
        )
        return
    old = stack.plan.topology.version_of(service)
    click.echo(
        f"{service} rolled back: canary drained and removed in "
        f"{result.rollback_seconds or 0:.1f}s; the old instances ({old}) were not touched"
    )
    sys.exit(1)


@cli.command()
@click.argument("component")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", default=40, show_default=True, help="Lines of history to show.")
@RUN_DIR_OPTION
def logs(component: str, follow: bool, lines: int, run_dir: Path | None) -> None:
    """Print a component's (or instance's) log; toxiproxy, prometheus, supervisord work too."""
    from management.stack import _resolve_run_dir, open_stack

    try:
        files = open_stack(run_dir).log_files(component)
    except TestbedError:
        run = _resolve_run_dir(run_dir)
        files = [run / "logs" / f"{component}.log"]
        if not files[0].exists():
            raise
    _print_logs(files, lines=lines, follow=follow)


def _print_logs(files: list[Path], *, lines: int, follow: bool) -> None:
    prefix = len(files) > 1
    offsets: dict[Path, int] = {}
    for path in files:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        offsets[path] = len(data)
        for line in data.decode(errors="replace").splitlines()[-lines:]:
            click.echo(f"{path.stem}: {line}" if prefix else line)
    try:
        while follow:
            time.sleep(0.2)
            for path in files:
                try:
                    with path.open("rb") as f:
                        size = f.seek(0, 2)
                        if size < offsets[path]:
                            offsets[path] = 0
                        f.seek(offsets[path])
                        chunk = f.read()
                except FileNotFoundError:
                    continue
                offsets[path] += len(chunk)
                for line in chunk.decode(errors="replace").splitlines():
                    click.echo(f"{path.stem}: {line}" if prefix else line)
    except KeyboardInterrupt:
        return


@cli.command()
@RUN_DIR_OPTION
def down(run_dir: Path | None) -> None:
    """Stop everything the stack started (also after a crash of the CLI)."""
    from management.stack import current_run_dir
    from management.stack import down as stack_down

    run = run_dir.resolve() if run_dir else current_run_dir()
    if run is None:
        click.echo("no stack is up")
        return
    forced = stack_down(run, progress=_say)
    extra = f" ({forced} had to be killed)" if forced else ""
    click.echo(f"stack in {run} is down{extra}; logs and data stay there")


@cli.command()
@TOPOLOGY_OPTION
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write into (default: compose/ of the checkout, else ./compose-out).",
)
def compose(topology: Path | None, out: Path | None) -> None:
    """Write the Docker Compose files (containers, Toxiproxy, Jaeger, Prometheus, Grafana)."""
    from management.compose import default_out_dir, render_compose
    from management.topology import load_topology

    target = out or default_out_dir()
    written = render_compose(load_topology(topology), out_dir=target)
    click.echo(f"wrote {len(written)} files to {target}")
    for path in written:
        click.echo(f"  {path.relative_to(target)}")
    click.echo(f"run it where Docker is: docker compose -f {target / 'docker-compose.yaml'} up")


@cli.command("k8s")
@TOPOLOGY_OPTION
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write into (default: k8s/ of the checkout, else ./k8s-out).",
)
@click.option(
    "--locust-workers",
    type=click.IntRange(0, 100),
    default=2,
    show_default=True,
    help="Replicas of the Locust worker Deployment.",
)
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Validate the manifests with tools/bin/k8s-validate (built by make setup) if present.",
)
def k8s(topology: Path | None, out: Path | None, locust_workers: int, check: bool) -> None:
    """Write Kubernetes manifests (instances, Toxiproxy, observability, Locust, Chaos Mesh)."""
    from management.k8s.render import NAMESPACE, default_out_dir, render_k8s
    from management.k8s.validate_cli import validate_manifests
    from management.topology import load_topology

    target = out or default_out_dir()
    written = render_k8s(load_topology(topology), out_dir=target, locust_workers=locust_workers)
    click.echo(f"wrote {len(written)} files to {target}")
    if check:
        ok, report = validate_manifests(target)
        click.echo(report)
        if not ok:
            sys.exit(1)
    click.echo(
        f"apply it where a cluster is: kubectl apply -f {target} "
        f"(namespace {NAMESPACE}; chaos-mesh/ needs Chaos Mesh, apply one file to inject)"
    )


def _add_component_commands() -> None:
    """Commands implemented next to what they drive (kept out of this file's imports at top)."""
    from chaos.cli import chaos, load
    from chaos.demo import demo
    from chaos.suite import compare, suite
    from chaos.traces_cli import traces
    from management.audit_cli import audit

    for command in (audit, chaos, load, demo, traces):
        cli.add_command(command)
    chaos.add_command(compare)
    chaos.add_command(suite)


_add_component_commands()


def main() -> None:
    """Entry point: run the CLI, turning deliberate errors into one clear line and exit code 2."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except TestbedError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    # With standalone_mode=False, click returns ctx.exit()'s code instead of exiting.
    if isinstance(code, int) and code != 0:
        sys.exit(code)
