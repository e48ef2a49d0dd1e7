"""The ``testbed`` command line.

Subcommands are registered here from the modules that implement them; each keeps its logic in a
typed function that tests (and the chaos engine) can call without going through the CLI.
"""

from __future__ import annotations

import sys

import click

from management import __version__
from mesh.errors import TestbedError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="testbed")
def cli() -> None:
    """A chaos and observability testbed for microservice architectures.

    It runs a real microservice system on one machine (services with their own databases, an
    API gateway, a load balancer, CDN edge caches, a management plane), instruments every hop
    with OpenTelemetry traces and Prometheus metrics, and lets you break it on purpose.
    """


def main() -> None:
    """Entry point: run the CLI, turning deliberate errors into one clear line and exit code 2."""
    try:
        cli.main(standalone_mode=False)
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
