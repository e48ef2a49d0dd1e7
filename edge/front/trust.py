"""Who is one of our own hops: the networks whose requests the edge believes.

The CDN PoPs are the public entry. A request from anywhere else is the public's, and what it
says about itself is not believed: its ``traceparent`` does not become the PoP's parent (the
PoP starts a trace of its own and keeps the client's context as a span link, so the sampling
budget holds whatever clients send), its ``X-Forwarded-*`` fields are overwritten rather
than extended, and the hash-balancing header is dropped (the PoP sets it itself). Requests
from a trusted network (another proxy tier of ours, a load tester that should continue its
own traces) keep all of that. The balancer believes its hash header from trusted peers only.

``TrustedNetworks.parse`` reads a comma-separated list of CIDRs (``10.0.0.0/8, ::1/128``; a
bare address is one host); the empty list trusts no one, the default.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Final

from mesh.errors import ConfigError

__all__ = ["TrustedNetworks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MEMO_SIZE: Final = 1024
"""Peer addresses whose verdict is remembered, at most (the memo starts over past it)."""


@dataclass(frozen=True)
class TrustedNetworks:
    """A set of networks; ``address in networks`` says whether a peer is in one of them."""

    networks: tuple[Network, ...] = ()
    _memo: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, raw: str, variable: str) -> TrustedNetworks:
        """The networks of ``raw`` (CIDRs, comma-separated); a ``ConfigError`` names
        ``variable`` and the entry that is not one."""
        networks: list[Network] = []
        for part in raw.split(","):
            entry = part.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ConfigError(
                    f"{variable}: {entry!r} is not a network; give CIDRs such as "
                    "10.0.0.0/8 or 127.0.0.1/32, comma-separated"
                ) from None
        return cls(tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: object) -> bool:
        if not self.networks or not isinstance(address, str):
            return False
        found = self._memo.get(address)
        if found is None:
            found = self._check(address)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[address] = found
        return found

    def _check(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False  # not an IP address (a Unix socket's peer): not ours
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def __str__(self) -> str:
        return ",".join(str(n) for n in self.networks)
