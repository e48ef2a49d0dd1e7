"""A taken port is reported with who holds it; a missing tool ends with how to install it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from management import toxiproxy
from management.ports import PortInUse, check_ports_free
from mesh.errors import ConfigError


def test_port_in_use_names_port_purpose_and_holder() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUse) as info:
            check_ports_free({port: "Prometheus"})
    message = str(info.value)
    assert f"port {port} (for Prometheus) is in use" in message
    assert f"pid {os.getpid()}" in message
    assert "--base-port" in message


def test_missing_toxiproxy_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(toxiproxy, "REPO_ROOT", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("TESTBED_TOXIPROXY", raising=False)
    with pytest.raises(ConfigError, match="make setup"):
        toxiproxy.find_binary(
            "toxiproxy-server", env_var="TESTBED_TOXIPROXY", hint=toxiproxy.INSTALL_HINT
        )
