"""``testbed audit`` as a command: help, and exit 1 when a service cannot be audited."""

from __future__ import annotations

from click.testing import CliRunner

from management.audit_cli import audit
from tests.support.processes import free_port


def test_help_names_the_options() -> None:
    result = CliRunner().invoke(audit, ["--help"])
    assert result.exit_code == 0
    for option in ("--orders", "--inventory", "--payments", "--catalog", "--json"):
        assert option in result.output


def test_unreachable_services_fail_the_audit() -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    result = CliRunner().invoke(
        audit,
        ["--orders", address, "--inventory", address, "--payments", address, "--json"],
    )
    assert result.exit_code == 1, result.output
    assert '"ok": false' in result.output
    assert "unavailable" in result.output
