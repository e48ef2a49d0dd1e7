"""A CDN PoP's settings, read once from the environment.

Besides the common ``TESTBED_*`` variables (``mesh.process``):

``TESTBED_REGION``         the region this PoP serves: ``sa``, ``us`` or ``eu`` (default ``us``)
``CDN_ORIGIN_URL``         base URL of the origin (the load balancer, or its Toxiproxy proxy),
                           e.g. ``http://127.0.0.1:8080`` (required)
``CDN_CACHE_BYTES``        cache size in bytes, bodies plus headers (default 67108864, 64 MiB)
``CDN_MAX_OBJECT_BYTES``   larger answers are streamed through, never stored (default 8 MiB)
``CDN_CONNECT_TIMEOUT``    deadline to connect to the origin (default 2)
``CDN_ORIGIN_TIMEOUT``     longest silence from the origin before the fetch fails (default 30)
``CDN_TOTAL_TIMEOUT``      cap on one whole origin exchange (default 300)
``CDN_POOL_SIZE``          keep-alive connections to the origin (default 256)
``CDN_BUFFER_BYTES``       pass-through bodies up to this size are relayed whole (default 65536)
``CDN_TRUSTED_NETWORKS``   clients in these networks (CIDRs, comma-separated) are our own hops:
                           their trace context is continued and their X-Forwarded-* fields
                           extended; everyone else's are not (default: none, ``edge.front.trust``)
``CDN_HASH_HEADER``        the header the balancer behind hashes on (``BALANCER_HASH_HEADER``):
                           dropped from untrusted clients' requests, set by the PoP to the
                           client's address when absent (default: none)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from yarl import URL

from edge.front.trust import TrustedNetworks
from mesh.errors import ConfigError
from mesh.process import ProcessConfig, env_float, env_int

REGIONS = ("sa", "us", "eu")


@dataclass(frozen=True, kw_only=True)
class CdnConfig:
    """Everything a PoP reads from its environment."""

    process: ProcessConfig
    origin_url: str
    region: str = "us"
    cache_bytes: int = 64 * 1024 * 1024
    max_object_bytes: int = 8 * 1024 * 1024
    connect_timeout: float = 2.0
    origin_timeout: float = 30.0
    total_timeout: float = 300.0
    pool_size: int = 256
    buffer_bytes: int = 65_536
    trusted_networks: TrustedNetworks = field(default_factory=TrustedNetworks)
    hash_header: str | None = None

    def __post_init__(self) -> None:
        if self.region not in REGIONS:
            raise ConfigError(
                f"TESTBED_REGION={self.region!r} is unknown; use one of {', '.join(REGIONS)}"
            )
        url = URL(self.origin_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                f"CDN_ORIGIN_URL={self.origin_url!r} must be an http(s) URL with a host"
            )
        if url.path not in ("", "/") or url.query_string:
            raise ConfigError(f"CDN_ORIGIN_URL={self.origin_url!r} must not carry a path or query")

    @property
    def origin(self) -> str:
        """The origin's base URL without a trailing slash."""
        return self.origin_url.rstrip("/")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CdnConfig:
        e = os.environ if env is None else env
        origin = e.get("CDN_ORIGIN_URL")
        if not origin:
            raise ConfigError("CDN_ORIGIN_URL is required (e.g. http://127.0.0.1:8080)")
        region = e.get("TESTBED_REGION") or "us"
        return cls(
            process=ProcessConfig.from_env(f"cdn-{region}", e),
            origin_url=origin,
            region=region,
            cache_bytes=env_int(e, "CDN_CACHE_BYTES", 64 * 1024 * 1024, minimum=0),
            max_object_bytes=env_int(e, "CDN_MAX_OBJECT_BYTES", 8 * 1024 * 1024, minimum=0),
            connect_timeout=env_float(e, "CDN_CONNECT_TIMEOUT", 2.0, minimum=0.01),
            origin_timeout=env_float(e, "CDN_ORIGIN_TIMEOUT", 30.0, minimum=0.01),
            total_timeout=env_float(e, "CDN_TOTAL_TIMEOUT", 300.0, minimum=0.01),
            pool_size=env_int(e, "CDN_POOL_SIZE", 256, minimum=1),
            buffer_bytes=env_int(e, "CDN_BUFFER_BYTES", 65_536, minimum=0),
            trusted_networks=TrustedNetworks.parse(
                e.get("CDN_TRUSTED_NETWORKS", ""), "CDN_TRUSTED_NETWORKS"
            ),
            hash_header=(e.get("CDN_HASH_HEADER") or "").strip() or None,
        )
