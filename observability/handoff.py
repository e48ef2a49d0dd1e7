"""A public listener that a successor process can take over without refusing a connection.

A component that runs as one instance (the load balancer, a CDN PoP) has no replica to send
traffic to while it restarts; stopping it refuses every connection until the new version
listens. The lossless way, as HAProxy's seamless reload and Envoy's hot restart do it: the new
version listens on the same port *before* the old one lets go, then the old one closes its
listener, finishes what is in flight and exits (``testbed deploy`` drives that sequence:
``management.stack``).

Two processes share the port with ``SO_REUSEPORT`` (same user, both sockets set it). Left to
itself, Linux spreads new connections over both listeners by a hash; a connection still in the
old listener's accept queue when it closes is reset (``net.ipv4.tcp_migrate_req``, off by
default, would migrate it). So every listener made here also attaches a one-instruction
classic BPF program to the port's reuseport group (``SO_ATTACH_REUSEPORT_CBPF``) that answers
"socket 1": the second listener of the group, i.e. the successor, gets every new connection
from the moment it listens, and the old one's queue stays empty. Alone in the group the index
is out of range and the kernel falls back to its hash, i.e. the only listener; when the old
listener closes, the kernel moves the successor into slot 0, so the next successor is slot 1
again. The group never holds more than two listeners (``testbed deploy`` hands over one
instance at a time).
"""

from __future__ import annotations

import ctypes
import socket
import struct

__all__ = ["SO_ATTACH_REUSEPORT_CBPF", "handoff_socket", "steer_to_newest", "steering_program"]

SO_ATTACH_REUSEPORT_CBPF = 51
"""``include/uapi/asm-generic/socket.h`` (Linux 4.5+); Python's socket module lacks it."""
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: return the constant k
_NEWEST = 1
_BACKLOG = 128  # aiohttp's sites' default


def steering_program(index: int = _NEWEST) -> bytes:
    """The classic BPF program (``struct sock_filter[]``) that picks listener ``index``."""
    return struct.pack("=HBBI", _BPF_RET_K, 0, 0, index)


def steer_to_newest(sock: socket.socket) -> bool:
    """Attach the steering program to ``sock``'s reuseport group (``sock`` must listen).

    Returns False where the kernel has no such option (not Linux): the listeners then share
    new connections by hash, and a handover may reset the few in the old one's queue.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        return False
    program = steering_program()
    buffer = ctypes.create_string_buffer(program, len(program))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (native layout).
    fprog = struct.pack("HP", 1, ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError:
        return False
    return True


def handoff_socket(host: str, port: int, *, backlog: int = _BACKLOG) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port`` with ``SO_REUSEPORT``, steering
    new connections to the newest listener of the port (module docstring)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
        steer_to_newest(sock)  # after listen: before it, the program would not join the group
    except BaseException:
        sock.close()
        raise
    return sock
