"""Is a port free, and if not, who holds it.

The holder is found the way ``ss -ltnp`` does it, without needing ``ss``: the listening socket's
inode from ``/proc/net/tcp``/``tcp6``, then the process whose ``/proc/<pid>/fd`` links to it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

from mesh.errors import ConfigError

__all__ = ["PortInUse", "check_ports_free", "describe_holder", "listening_pids", "port_is_free"]

_LISTEN = "0A"


class PortInUse(ConfigError):
    """One or more ports the stack needs are taken; the message names each and its holder."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) < 10:
                    continue
                local_port = int(fields[1].rpartition(":")[2], 16)
                if local_port == port and fields[3] == _LISTEN:
                    inodes.add(fields[9])
    return inodes


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)[:160]


def listening_pids(port: int) -> set[int]:
    """The processes listening on ``port`` (several when they share it with SO_REUSEPORT)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return set()
    targets = {f"socket:[{inode}]" for inode in inodes}
    pids: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in targets:
                        pids.add(int(entry.name))
                        break
    return pids


def describe_holder(port: int) -> str:
    """``pid 123 (python -m services.orders)``, or why it cannot be told."""
    inodes = _listening_inodes(port)
    if not inodes:
        return "held by a socket not listening (TIME_WAIT or another state), or unknown"
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in targets:
                        pid = int(entry.name)
                        return f"pid {pid} ({_cmdline(pid)})"
    return "held by a process this user cannot see"


def check_ports_free(ports: Mapping[int, str] | Iterable[int]) -> None:
    """Raise ``PortInUse`` naming every taken port, what it was for and who holds it."""
    labels = ports if isinstance(ports, Mapping) else {p: "" for p in ports}
    taken = [p for p in sorted(labels) if not port_is_free(p)]
    if not taken:
        return
    lines = []
    for p in taken:
        purpose = f" (for {labels[p]})" if labels[p] else ""
        lines.append(f"port {p}{purpose} is in use: {describe_holder(p)}")
    raise PortInUse(
        "\n".join(lines) + "\nchoose another base port with --base-port or TESTBED_BASE_PORT"
    )
