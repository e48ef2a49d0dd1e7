"""The load balancer's settings, read once from the environment.

Besides the common ``TESTBED_*`` variables (``mesh.process``; ``TESTBED_UPSTREAMS`` lists the
gateway replicas for static discovery):

``BALANCER_UPSTREAM``            service name of the instances to balance (default ``gateway``)
``BALANCER_POLICY``              ``round_robin`` (default), ``least_request``, ``consistent_hash``
``BALANCER_HASH_HEADER``         consistent_hash key: this request header, believed from trusted
                                 peers only (default, and for anyone else: the client address)
``BALANCER_TRUSTED_PEERS``       our own hops (the PoPs), CIDRs comma-separated: the only peers
                                 whose hash header is honoured; it is dropped from the others'
                                 requests (default: none; the embedded stack sets 127.0.0.1/32)
``BALANCER_HEALTH_PATH``         active health check path (default ``/readyz``)
``BALANCER_HEALTH_INTERVAL``     seconds between checks of each instance (default 0.1; none
                                 while an instance is between states)
``BALANCER_HEALTH_TIMEOUT``      deadline of one check (default 0.3); a check that times out
                                 while requests to the instance wait and not one byte came
                                 from it since the check began takes it out at once
                                 (``unresponsive``: frozen under load)
``BALANCER_HEALTH_FALL``         failed checks in a row that take an instance out (default 2)
``BALANCER_HEALTH_RISE``         passed checks in a row that put it back (default 2); the only
                                 way back in, whatever took the instance out
``BALANCER_CONNECT_TIMEOUT``     deadline to get a connection to an instance (default 1.0)
``BALANCER_FIRST_BYTE_TIMEOUT``  longest wait for the first byte of an answer once the request
                                 is sent (HAProxy's ``timeout server`` for the head; default 5,
                                 well above a healthy gateway's p99 under load): then a safe
                                 request is sent once to another instance, any other gets 504
``BALANCER_READ_TIMEOUT``        longest silence while reading an answer, -> 504 (default 30)
``BALANCER_TOTAL_TIMEOUT``       cap on one whole upstream exchange (default 300)
``BALANCER_POOL_SIZE``           keep-alive connections in total (default 512)
``BALANCER_POOL_PER_HOST``       ... per instance (default 128); a request finding them all busy
                                 waits up to BALANCER_CONNECT_TIMEOUT for one, then 503
``BALANCER_IDLE_TIMEOUT``        seconds an unused keep-alive connection stays open (default 30;
                                 keep it below the instances' own keep-alive timeout)
``BALANCER_RETRIES``             extra attempts on another instance when safe (default 2)
``BALANCER_RETRY_KEYED``         ``1`` (default): a POST/PATCH carrying an ``Idempotency-Key`` is
                                 as safe to send twice as a GET (the gateway deduplicates it);
                                 ``0``: never repeat a written non-idempotent request
``BALANCER_OUTLIER_FAILURES``    consecutive failures on live traffic (5xx, reset, first-byte
                                 timeout) that take an instance out (default 3); a refused
                                 connection takes it out at once
``BALANCER_BUFFER_BYTES``        bodies up to this size are read whole (fast path, and a
                                 request body can be replayed on a retry); larger ones stream
                                 (default 65536)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from edge.front.trust import TrustedNetworks
from mesh.balancing import POLICIES
from mesh.errors import ConfigError
from mesh.process import ProcessConfig, env_float, env_int


@dataclass(frozen=True, kw_only=True)
class BalancerConfig:
    """Everything the load balancer reads from its environment."""

    process: ProcessConfig
    upstream: str = "gateway"
    policy: str = "round_robin"
    hash_header: str | None = None
    trusted_peers: TrustedNetworks = field(default_factory=TrustedNetworks)
    health_path: str = "/readyz"
    health_interval: float = 0.1
    health_timeout: float = 0.3
    health_fall: int = 2
    health_rise: int = 2
    connect_timeout: float = 1.0
    first_byte_timeout: float = 5.0
    read_timeout: float = 30.0
    total_timeout: float = 300.0
    pool_size: int = 512
    pool_per_host: int = 128
    idle_timeout: float = 30.0
    retries: int = 2
    retry_keyed: bool = True
    outlier_failures: int = 3
    buffer_bytes: int = 65_536

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(
                f"BALANCER_POLICY={self.policy!r} is unknown; use one of {', '.join(POLICIES)}"
            )
        if not self.health_path.startswith("/"):
            raise ConfigError(f"BALANCER_HEALTH_PATH={self.health_path!r} must start with '/'")
        if self.health_fall < 1 or self.health_rise < 1:
            raise ConfigError("BALANCER_HEALTH_FALL and BALANCER_HEALTH_RISE must be at least 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BalancerConfig:
        e = os.environ if env is None else env
        return cls(
            process=ProcessConfig.from_env("balancer", e),
            upstream=e.get("BALANCER_UPSTREAM") or "gateway",
            policy=e.get("BALANCER_POLICY") or "round_robin",
            hash_header=e.get("BALANCER_HASH_HEADER") or None,
            trusted_peers=TrustedNetworks.parse(
                e.get("BALANCER_TRUSTED_PEERS", ""), "BALANCER_TRUSTED_PEERS"
            ),
            health_path=e.get("BALANCER_HEALTH_PATH") or "/readyz",
            health_interval=env_float(e, "BALANCER_HEALTH_INTERVAL", 0.1, minimum=0.01),
            health_timeout=env_float(e, "BALANCER_HEALTH_TIMEOUT", 0.3, minimum=0.01),
            health_fall=env_int(e, "BALANCER_HEALTH_FALL", 2, minimum=1),
            health_rise=env_int(e, "BALANCER_HEALTH_RISE", 2, minimum=1),
            connect_timeout=env_float(e, "BALANCER_CONNECT_TIMEOUT", 1.0, minimum=0.01),
            first_byte_timeout=env_float(e, "BALANCER_FIRST_BYTE_TIMEOUT", 5.0, minimum=0.01),
            read_timeout=env_float(e, "BALANCER_READ_TIMEOUT", 30.0, minimum=0.01),
            total_timeout=env_float(e, "BALANCER_TOTAL_TIMEOUT", 300.0, minimum=0.01),
            pool_size=env_int(e, "BALANCER_POOL_SIZE", 512, minimum=1),
            pool_per_host=env_int(e, "BALANCER_POOL_PER_HOST", 128, minimum=1),
            idle_timeout=env_float(e, "BALANCER_IDLE_TIMEOUT", 30.0, minimum=0.01),
            retries=env_int(e, "BALANCER_RETRIES", 2, minimum=0),
            retry_keyed=(e.get("BALANCER_RETRY_KEYED") or "1").strip().lower()
            not in ("0", "false", "no", "off"),
            outlier_failures=env_int(e, "BALANCER_OUTLIER_FAILURES", 3, minimum=1),
            buffer_bytes=env_int(e, "BALANCER_BUFFER_BYTES", 65_536, minimum=0),
        )
