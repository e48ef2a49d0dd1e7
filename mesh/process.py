"""The configuration every testbed process shares, read once from the environment.

Every process of the testbed (services, edge, management) is started as ``python -m <package>``
with its settings in environment variables; ``ProcessConfig.from_env`` is the only reader of
those common variables. Component-specific settings live in the component's own frozen config,
which holds a ``ProcessConfig`` as its ``process`` field.

Variables (all optional except where noted):

``TESTBED_SERVICE``        logical service name, e.g. ``orders`` (default: the component's name)
``TESTBED_INSTANCE_ID``    unique instance id, e.g. ``orders-1`` (default: ``<service>-<port>``)
``TESTBED_HOST``           address to listen on (default ``127.0.0.1``)
``TESTBED_PORT``           port to listen on (required to run; 0 picks a free one in tests)
``TESTBED_ADMIN_PORT``     port of the admin API (faults, purge, drain), on its own listener so
                           no public route can reach it (default: none, no admin listener)
``TESTBED_ADVERTISE``      ``host:port`` to advertise to the registry (default: host:port; the
                           management plane sets it to the instance's Toxiproxy proxy)
``TESTBED_VERSION``        the version this instance runs (default ``v1``)
``TESTBED_RUN_DIR``        the run folder: databases, span files, logs (default ``./runs/local``)
``TESTBED_ADMIN_TOKEN``    token protecting the admin API (default ``testbed-admin``, accepted only
                           while the process listens on loopback; ``testbed up`` sets a
                           random one per run)
``TESTBED_REGISTRY_URL``   base URL of the registry (unset: static discovery only)
``TESTBED_UPSTREAMS``      static discovery: ``svc=host:port,host:port;svc2=host:port``
``TESTBED_RESILIENCE``     resilience profile for outbound calls: ``none``, ``basic``, ``full``
``TESTBED_RESILIENCE_OVERRIDES``  per-upstream profiles that win over the one above, e.g.
                           ``payments=none,inventory=basic`` (from the topology's links)
``TESTBED_PER_TRY_TIMEOUT_MS``  per-upstream per-try timeouts of retried calls, e.g.
                           ``payments=250``: past it, the retry goes to another instance
``TESTBED_LOG_FORMAT``     ``json``, ``console`` or ``auto`` (JSON when not on a terminal)
``TESTBED_LOG_LEVEL``      ``debug``, ``info`` (default), ``warning``, ``error``
``TESTBED_DRAIN_SECONDS``  how long shutdown waits for in-flight requests (default 5)
``TESTBED_REUSE_PORT``     ``1``: the public listener shares its port with a successor
                           (``SO_REUSEPORT``, ``observability.handoff``) and on shutdown closes
                           first; how a single instance is redeployed without loss (default 0)
``TESTBED_RETRY_BUDGET``  ``off`` lifts the retry budget of profiles that retry (``full``): every
                         failed try is retried up to the policy's count, as without a budget
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mesh.errors import ConfigError

RESILIENCE_PROFILES = ("none", "basic", "full")
DEFAULT_ADMIN_TOKEN = "testbed-admin"
"""The admin token of a process started without ``TESTBED_ADMIN_TOKEN``: printed in the code,
so a process refuses it when its admin API listens beyond loopback (``admin_exposure``)."""
LOG_FORMATS = ("json", "console", "auto")


def _parse_upstreams(raw: str) -> dict[str, tuple[str, ...]]:
    """Parse ``svc=host:port,host:port;svc2=host:port`` into a mapping."""
    result: dict[str, tuple[str, ...]] = {}
    for part in raw.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, addresses = part.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"TESTBED_UPSTREAMS: {part!r} is not 'service=host:port[,host:port]'")
        addrs = tuple(a.strip() for a in addresses.split(",") if a.strip())
        for addr in addrs:
            host, colon, port = addr.rpartition(":")
            if not colon or not host or not port.isdigit():
                raise ConfigError(f"TESTBED_UPSTREAMS: {addr!r} is not 'host:port'")
        result[name.strip()] = addrs
    return result


def _parse_overrides(raw: str) -> dict[str, str]:
    """Parse ``svc=profile,svc2=profile`` (per-upstream resilience profiles)."""
    result: dict[str, str] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, profile = part.partition("=")
        if not sep or not name.strip() or profile.strip() not in RESILIENCE_PROFILES:
            raise ConfigError(
                f"TESTBED_RESILIENCE_OVERRIDES: {part!r} is not 'service=profile' with a profile "
                f"among {', '.join(RESILIENCE_PROFILES)}"
            )
        result[name.strip()] = profile.strip()
    return result


def _parse_per_try(raw: str) -> dict[str, float]:
    """Parse ``svc=ms,svc2=ms`` into seconds per upstream."""
    result: dict[str, float] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, ms = part.partition("=")
        try:
            value = float(ms)
        except ValueError:
            value = -1.0
        if not sep or not name.strip() or value <= 0:
            raise ConfigError(
                f"TESTBED_PER_TRY_TIMEOUT_MS: {part!r} is not 'service=milliseconds' (above 0)"
            )
        result[name.strip()] = value / 1000
    return result


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _on_off(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("on", "true", "1", "yes"):
        return True
    if raw in ("off", "false", "0", "no"):
        return False
    raise ConfigError(f"{name}={env[name]!r} is neither on nor off")


def _canary_share(env: Mapping[str, str]) -> float | None:
    raw = env.get("TESTBED_CANARY_SHARE")
    if not raw:
        return None
    share = env_float(env, "TESTBED_CANARY_SHARE", 0.0, minimum=0.0, maximum=1.0)
    if not 0.0 < share < 1.0:
        raise ConfigError(f"TESTBED_CANARY_SHARE={raw!r} must lie strictly between 0 and 1")
    return share


def env_float(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """``env[name]`` as a number (``default`` when unset or empty); a ``ConfigError`` names
    the variable and what is wrong when it is not a number or out of range."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    _check_range(name, value, minimum, maximum)
    return value


def env_int(
    env: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """``env[name]`` as an integer, like ``env_float``."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    _check_range(name, value, minimum, maximum)
    return value


def _check_range(name: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise ConfigError(f"{name}={value:g} must be at least {low:g}")
    if high is not None and value > high:
        raise ConfigError(f"{name}={value:g} must be at most {high:g}")


@dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    """Settings every testbed process shares."""

    service: str
    instance_id: str
    host: str = "127.0.0.1"
    port: int = 0
    admin_port: int | None = None
    advertise: str | None = None
    version: str = "v1"
    run_dir: Path = Path("runs/local")
    admin_token: str = DEFAULT_ADMIN_TOKEN
    registry_url: str | None = None
    upstreams: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    resilience: str = "full"
    resilience_overrides: Mapping[str, str] = field(default_factory=dict)
    per_try_timeouts: Mapping[str, float] = field(default_factory=dict)
    log_format: str = "auto"
    log_level: str = "info"
    drain_seconds: float = 5.0
    canary_share: float | None = None
    """A canary (``testbed deploy --canary``): the share of its service's traffic callers
    send it, registered as metadata (``TESTBED_CANARY_SHARE``)."""
    retry_budget: bool = True
    """``TESTBED_RETRY_BUDGET=off``: retries without their budget (to show what it saves)."""
    reuse_port: bool = False

    def __post_init__(self) -> None:
        if self.resilience not in RESILIENCE_PROFILES:
            raise ConfigError(
                f"resilience profile {self.resilience!r} is unknown; "
                f"use one of {', '.join(RESILIENCE_PROFILES)}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"log format {self.log_format!r} is unknown; use one of {', '.join(LOG_FORMATS)}"
            )
        for name, value in (("port", self.port), ("admin port", self.admin_port)):
            if value is not None and not 0 <= value <= 65535:
                raise ConfigError(f"{name} {value} is out of range 0-65535")

    def admin_exposure(self) -> str | None:
        """Why this process must not start, when its admin API would listen beyond loopback
        with the well-known default token; None when it may."""
        if self.admin_port is None or is_loopback(self.host):
            return None
        if self.admin_token != DEFAULT_ADMIN_TOKEN:
            return None
        return (
            f"the admin API would listen on {self.host}:{self.admin_port} with the default "
            "admin token; set TESTBED_ADMIN_TOKEN to a secret "
            "(python -c 'import secrets; print(secrets.token_urlsafe())') or listen on "
            "127.0.0.1 (TESTBED_HOST)"
        )

    def resilience_for(self, upstream: str) -> str:
        """The resilience profile this process uses when calling ``upstream``."""
        return self.resilience_overrides.get(upstream, self.resilience)

    @property
    def advertised_address(self) -> str:
        """The ``host:port`` other processes should use to reach this one."""
        return self.advertise or f"{self.host}:{self.port}"

    @classmethod
    def from_env(cls, default_service: str, env: Mapping[str, str] | None = None) -> ProcessConfig:
        """Read the common settings; ``env`` defaults to ``os.environ``."""
        e = os.environ if env is None else env
        service = e.get("TESTBED_SERVICE") or default_service
        port = env_int(e, "TESTBED_PORT", 0)
        return cls(
            service=service,
            instance_id=e.get("TESTBED_INSTANCE_ID") or f"{service}-{port}",
            host=e.get("TESTBED_HOST") or "127.0.0.1",
            port=port,
            admin_port=(
                env_int(e, "TESTBED_ADMIN_PORT", 0) if e.get("TESTBED_ADMIN_PORT") else None
            ),
            advertise=e.get("TESTBED_ADVERTISE") or None,
            version=e.get("TESTBED_VERSION") or "v1",
            run_dir=Path(e.get("TESTBED_RUN_DIR") or "runs/local"),
            admin_token=e.get("TESTBED_ADMIN_TOKEN") or DEFAULT_ADMIN_TOKEN,
            registry_url=e.get("TESTBED_REGISTRY_URL") or None,
            upstreams=_parse_upstreams(e.get("TESTBED_UPSTREAMS", "")),
            resilience=e.get("TESTBED_RESILIENCE") or "full",
            resilience_overrides=_parse_overrides(e.get("TESTBED_RESILIENCE_OVERRIDES", "")),
            per_try_timeouts=_parse_per_try(e.get("TESTBED_PER_TRY_TIMEOUT_MS", "")),
            log_format=e.get("TESTBED_LOG_FORMAT") or "auto",
            log_level=(e.get("TESTBED_LOG_LEVEL") or "info").lower(),
            drain_seconds=env_float(e, "TESTBED_DRAIN_SECONDS", 5.0, minimum=0),
            canary_share=_canary_share(e),
            retry_budget=_on_off(e, "TESTBED_RETRY_BUDGET", default=True),
            reuse_port=_on_off(e, "TESTBED_REUSE_PORT", default=False),
        )
