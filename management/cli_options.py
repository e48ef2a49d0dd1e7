"""Command-line options several ``testbed`` commands share, defined once.

A leaf module (only click): the management, chaos and load commands all import it.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["RUN_DIR_OPTION", "STACKS_BASE_PORT_OPTION", "TOPOLOGY_OPTION"]

RUN_DIR_OPTION = click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The stack's run folder (default: the current run).",
)
"""``--run-dir`` of the commands that act on a running (or stopped) stack."""

TOPOLOGY_OPTION = click.option(
    "--topology",
    "topology",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Topology YAML (default: the one shipped with the package).",
)
"""``--topology`` of the commands that read a topology file."""

STACKS_BASE_PORT_OPTION = click.option(
    "--base-port",
    type=click.IntRange(1024, 65000),
    default=None,
    envvar="TESTBED_BASE_PORT",
    help="First port of the stacks' range.",
)
"""``--base-port`` of the commands that bring fresh stacks up themselves (demo, suite, bench)."""
