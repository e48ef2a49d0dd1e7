"""The trace UI of the embedded stack: Zipkin's server (in-memory) and its Lens UI.

Jaeger's Go build carries no UI assets, so ``testbed up`` also starts Zipkin
(``io.zipkin:zipkin-server``, the ``exec`` jar ``make setup`` puts in ``tools/zipkin/``) on
``B+6`` and a shipper (``observability.zipkin``) that posts the run's span files to it. Both are
supervised like the other infrastructure; ``testbed up --no-trace-ui`` leaves them out.

The JVM is sized for a testbed, not a fleet: a 192 MB heap, the serial collector and the
client compiler only (it starts faster and uses less CPU while the stack starts); Zipkin keeps
at most ``MAX_SPANS`` spans, dropping the oldest traces beyond that.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlencode

from management.plan import LOCALHOST
from mesh.errors import ConfigError

__all__ = [
    "ZIPKIN_VERSION",
    "find_zipkin",
    "lens_url",
    "shipper_command",
    "zipkin_command",
    "zipkin_env",
]

ZIPKIN_VERSION = "3.6.1"
MAX_SPANS = 50_000
"""Zipkin's guidance for its in-memory store is about 1 KB of heap a span plus 100 MB of
headroom; at 200,000 the 192 MB heap ran out (OutOfMemoryError) after a few minutes of a soak
with the stack tracing up to 100 new traces a second per process."""
JAR_ENV = "TESTBED_ZIPKIN_JAR"
INSTALL_HINT = (
    "run `make setup` (it fetches io.zipkin:zipkin-server with Maven into tools/zipkin/), "
    f"set {JAR_ENV}=/path/to/zipkin-server-{ZIPKIN_VERSION}-exec.jar, "
    "or start without the trace UI: `testbed up --no-trace-ui`"
)


def _repo_tools() -> Path:
    return Path(__file__).resolve().parent.parent / "tools"


def find_zipkin() -> tuple[str, Path]:
    """(java, Zipkin's exec jar), or a ConfigError saying how to get them."""
    jar = Path(
        os.environ.get(JAR_ENV)
        or _repo_tools() / "zipkin" / f"zipkin-server-{ZIPKIN_VERSION}-exec.jar"
    )
    if not jar.is_file():
        raise ConfigError(f"Zipkin's server jar is missing ({jar}): {INSTALL_HINT}")
    java = shutil.which("java")
    if java is None:
        raise ConfigError(
            "java is not on PATH (Zipkin needs Java 17+; Debian: apt-get install "
            "openjdk-17-jre-headless), or start without the trace UI: `testbed up --no-trace-ui`"
        )
    return java, jar


def zipkin_command(java: str, jar: Path, port: int) -> tuple[str, ...]:
    return (
        java,
        "-Xms32m",
        "-Xmx192m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Xss512k",
        "-jar",
        str(jar),
        f"--armeria.ports[0].ip={LOCALHOST}",
        f"--armeria.ports[0].port={port}",
        "--logging.level.root=WARN",
    )


def zipkin_env(port: int) -> dict[str, str]:
    return {
        "STORAGE_TYPE": "mem",
        "MEM_MAX_SPANS": str(MAX_SPANS),
        "QUERY_PORT": str(port),
        "SELF_TRACING_ENABLED": "false",
        "COLLECTOR_SCRIBE_ENABLED": "false",
    }


def shipper_command(python: str, traces_dir: Path, zipkin_url: str) -> tuple[str, ...]:
    return (python, "-m", "observability.zipkin", "--traces", str(traces_dir), "--url", zipkin_url)


def lens_url(
    base: str,
    *,
    start: float,
    end: float,
    service: str | None = None,
    limit: int = 50,
) -> str:
    """Zipkin Lens' search for traces between ``start`` and ``end`` (epoch seconds), of
    ``service`` when given."""
    query: dict[str, str] = {}
    if service:
        query["serviceName"] = service
    query.update(
        lookback="range",
        startTs=str(int(start * 1000)),
        endTs=str(int(end * 1000)),
        limit=str(limit),
    )
    return f"{base.rstrip('/')}/zipkin/?{urlencode(query)}"
