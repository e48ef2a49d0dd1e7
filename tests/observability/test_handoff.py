"""The hand-over listener: a successor on the same port gets every new connection."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from mesh.process import ProcessConfig
from observability.handoff import handoff_socket, steering_program


def _accepted(listener: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def _connect(port: int, n: int) -> list[socket.socket]:
    clients = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(n)]
    time.sleep(0.1)  # the handshakes land in the accept queues
    return clients


def test_the_newest_listener_takes_every_new_connection() -> None:
    old = handoff_socket("127.0.0.1", 0)
    port = old.getsockname()[1]
    successor = handoff_socket("127.0.0.1", port)
    clients = _connect(port, 20)
    assert (_accepted(old), _accepted(successor)) == (0, 20)
    old.close()  # nothing was queued on it: nothing reset
    clients += _connect(port, 5)  # alone: it takes them all
    assert _accepted(successor) == 5
    final = handoff_socket("127.0.0.1", port)  # the next hand-over: slot 1 again
    clients += _connect(port, 10)
    assert (_accepted(successor), _accepted(final)) == (0, 10)
    for sock in (successor, final, *clients):
        sock.close()


def test_a_port_held_without_reuse_port_is_refused() -> None:
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        with pytest.raises(OSError, match="in use"):
            handoff_socket("127.0.0.1", plain.getsockname()[1])


def test_steering_program_is_one_return_of_the_index() -> None:
    assert steering_program() == struct.pack("=HBBI", 0x06, 0, 0, 1)


def test_reuse_port_is_off_unless_asked() -> None:
    assert not ProcessConfig.from_env("lb", {}).reuse_port
    assert ProcessConfig.from_env("lb", {"TESTBED_REUSE_PORT": "1"}).reuse_port
