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


def test_canary_options_are_checked_before_anything_is_touched(tmp_path: Path) -> None:
    env = {"TESTBED_STATE_DIR": str(tmp_path)}
    runner = CliRunner()
    alone = runner.invoke(cli, ["deploy", "payments", "--version", "v2", "--share", "0.3"], env=env)
    assert alone.exit_code == 2
    assert "--share apply only with --canary" in alone.output
    share = runner.invoke(
        cli, ["deploy", "payments", "--version", "v2", "--canary", "--share", "1.2"], env=env
    )
    assert share.exit_code == 2
    assert "1.2 is not in the range 0<x<1" in share.output
    window = runner.invoke(
        cli, ["deploy", "payments", "--version", "v2", "--canary", "--judge-for", "soon"], env=env
    )
    assert window.exit_code == 2
    assert "'soon' is not a duration" in window.output
