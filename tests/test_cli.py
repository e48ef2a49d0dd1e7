"""The command line's front door: --help and --version work and name the program."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from management import __version__
from management.cli import cli


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output
    assert "testbed" in result.output


def test_help_describes_the_tool() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "chaos and observability testbed" in result.output


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "testbed"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout
