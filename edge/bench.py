"""Benchmark of the edge's Python hops, measured side by side in one run.

``python -m edge.bench [--duration 5] [--connections 32] [--runs 1]`` prints:

1. balancer throughput vs HAProxy, same two backends, both single-threaded
   (goal: >= 0.6x HAProxy's requests/s);
2. latency one balancer hop adds over calling a backend directly, one connection, one request
   at a time (goal: <= 0.5 ms at p50, <= 1.5 ms at p99);
3. CDN PoP cache hits vs a bare aiohttp handler answering the same bytes (goal: >= 0.8x).

The load generator is ``wrk`` (C, epoll; ``apt-get install -y wrk``), one thread, so it is not
the bottleneck; HAProxy is Debian's package (``apt-get install -y haproxy``). Every Python
process (balancer, PoP, backends, the bare handler) runs on the same event loop, the one the
testbed's processes use (uvloop when installed), so the ratios compare like with like.

The balancer and the PoP are measured in three configurations, each printed with its
settings:

``testbed default`` (the headline): the processes exactly as ``testbed up`` runs them. Their
connections start on the wire lane (``edge.front.wire``): the balancer proxies and the PoP
answers fresh hits below aiohttp's server. RED metrics for every request; up to 100 new traces
a second per process (``parentbased_ratelimiting``), each with its span in the span file and
its canonical log line; the requests beyond that (nearly all of them at saturation) are not
traced, and only their trace ids travel on.
``every request traced``: ``OTEL_TRACES_SAMPLER=parentbased_always_on``: a span, a span-file
record and a log line for every request, whatever the load.
``aiohttp server, no telemetry``: the balancer's and the PoP's request code served by
aiohttp's server (no wire lane), with no span, log line or metrics: what the wire lane saves
shows against the default, which does more on less.

HAProxy is configured as the balancer behaves: round robin, health checks, retries, keep-alive
to the backends, and the same forwarding fields (``X-Forwarded-For``, ``-Proto``, ``-Host``,
``Via``), so the backends parse as many fields behind either.

Everything runs on loopback on this machine, so the load generator, the proxy and the backends
share its cores: the figures are ratios measured under the same conditions, not capacities.
Each hop is measured right after its reference (HAProxy before the balancer, the bare handler
before the PoP), since the machine's load drifts. ``--runs N`` repeats the whole set N times
and prints the median of each figure.

Also usable as ``python -m edge.bench backend PORT`` / ``lb-core PORT TARGETS`` /
``pop-core PORT ORIGIN``: the helper processes this benchmark starts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from observability.app import event_loop_factory

BODY = b"x" * 512
BODY_HEADERS = {
    "Cache-Control": "public, max-age=3600",
    "ETag": '"bench-v1"',
    "Content-Type": "application/octet-stream",
}
PATH = "/bench"
REPO_ROOT = Path(__file__).resolve().parents[1]


# -- the backend processes -------------------------------------------------------------------


async def _bench(request: web.Request) -> web.Response:
    return web.Response(body=BODY, headers=BODY_HEADERS)


async def _ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def event_loop_name() -> str:
    """The event loop the testbed's processes run on (``observability.app.run``)."""
    factory = event_loop_factory()
    if factory is None:
        return "asyncio (default)"
    loop = factory()
    try:
        return f"{type(loop).__module__}.{type(loop).__name__}"
    finally:
        loop.close()


def _run_app(app: web.Application | Awaitable[web.Application], port: int) -> None:
    """``web.run_app`` on the testbed's event loop."""
    factory = event_loop_factory()
    loop = factory() if factory is not None else None
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


def serve_backend(port: int) -> None:
    """A bare aiohttp app: the gateway stand-in and the 'bare handler' of the CDN comparison."""
    app = web.Application()
    app.router.add_get(PATH, _bench)
    app.router.add_get("/readyz", _ready)
    _run_app(app, port)


async def _core_app(kind: str, target: str) -> web.Application:
    """The balancer's or PoP's request code on a plain app served by aiohttp's server (no
    wire lane, no telemetry middleware): the "aiohttp server, no telemetry" profile."""
    from prometheus_client import CollectorRegistry

    from mesh.discovery import StaticDiscovery
    from mesh.process import ProcessConfig

    process = ProcessConfig(service=kind, instance_id=f"{kind}-core")
    app = web.Application()
    if kind == "lb-core":
        from edge.balancer.app import add_proxy_route, upstream_client
        from edge.balancer.config import BalancerConfig
        from edge.balancer.metrics import BalancerMetrics
        from edge.balancer.pool import UpstreamPool
        from edge.balancer.proxy import Proxy

        lb_config = BalancerConfig(process=process)
        metrics = BalancerMetrics(CollectorRegistry())
        pool = UpstreamPool(lb_config, StaticDiscovery({"gateway": target.split(",")}), metrics)
        proxy = Proxy(lb_config, pool, upstream_client(lb_config), metrics)
        add_proxy_route(app, proxy.handle)
    else:
        from edge.cdn.app import origin_session
        from edge.cdn.cache import EdgeCache
        from edge.cdn.config import CdnConfig
        from edge.cdn.metrics import CdnMetrics
        from edge.cdn.store import CacheStore

        cdn_config = CdnConfig(process=process, origin_url=target)
        store = CacheStore(
            max_bytes=cdn_config.cache_bytes, max_object_bytes=cdn_config.max_object_bytes
        )
        cache = EdgeCache(
            cdn_config, store, origin_session(cdn_config), CdnMetrics(CollectorRegistry(), store)
        )
        app.router.add_route("*", "/{tail:.*}", cache.handle)
    return app


def serve_core(kind: str, port: int, target: str) -> None:
    _run_app(_core_app(kind, target), port)


# -- process handling --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(url, timeout=1.0) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {within}s")


@dataclass
class Procs:
    procs: list[subprocess.Popen[bytes]]

    def start(
        self, args: list[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        full = dict(os.environ)
        full.update(env or {})
        proc = subprocess.Popen(
            args,
            env=full,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop one process (SIGTERM, then SIGKILL after 10 s)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


@contextlib.contextmanager
def processes() -> Iterator[Procs]:
    procs = Procs([])
    try:
        yield procs
    finally:
        procs.stop_all()


# -- wrk -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float | None = None
    """CPU (user + system) the measured process spent per request, when one was given."""

    def cpu_text(self, who: str) -> str:
        return "" if self.cpu_us is None else f"; {who}: {self.cpu_us:.0f} us CPU per request"


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if match is None:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, *, connections: int, duration: float, cpu_of: int | None = None) -> WrkResult:
    """Drive ``url`` with wrk; with ``cpu_of`` (a pid), also that process's CPU per request."""
    cpu_before = cpu_seconds(cpu_of) if cpu_of is not None else 0.0
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:.*?timeout (\d+)"):
        match = re.search(pattern, out)
        if match:
            errors += int(match.group(1))
    cpu_us = None
    if cpu_of is not None:
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        cpu_us = (cpu_seconds(cpu_of) - cpu_before) * 1e6 / max(1, requests)
    return WrkResult(rps=rps, p50_ms=p50, p99_ms=p99, errors=errors, cpu_us=cpu_us)


# -- the set-ups -----------------------------------------------------------------------------

DEFAULT = "testbed default"
TRACED = "every request traced"
CORE = "aiohttp server, no telemetry"
PROFILES: dict[str, dict[str, str]] = {
    DEFAULT: {"TESTBED_LOG_LEVEL": "info"},
    TRACED: {"TESTBED_LOG_LEVEL": "info", "OTEL_TRACES_SAMPLER": "parentbased_always_on"},
}
DESCRIPTIONS = {
    DEFAULT: "as `testbed up` runs them, on the wire lane: RED metrics for every request; up "
    "to 100 new traces/s per process, each with its span and log line",
    TRACED: "a span exported to the span file and an info log line for every request, RED metrics",
    CORE: "the proxy code on aiohttp's server (no wire lane): no span, no log line, no metrics",
}


# The forwarding fields the balancer sets besides X-Forwarded-For (``option forwardfor``), so
# the backends parse as many fields behind either proxy; only the balancer's traceparent has
# no counterpart (this HAProxy traces nothing).
FORWARDING = """\
    acl has_proto req.hdr(x-forwarded-proto) -m found
    acl has_host req.hdr(x-forwarded-host) -m found
    http-request set-header X-Forwarded-Proto http unless has_proto
    http-request set-header X-Forwarded-Host %[req.hdr(host)] unless has_host
    http-request add-header Via "1.1 haproxy"
    http-response add-header Via "1.1 haproxy"
"""


def haproxy_config(port: int, backends: list[int]) -> str:
    servers = "\n".join(
        f"    server b{i} 127.0.0.1:{p} check inter 100 fall 2 rise 2"
        for i, p in enumerate(backends)
    )
    return f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 300ms
    option forwardfor
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance roundrobin
    option httpchk GET /readyz
    retries 2
    option redispatch
{FORWARDING}{servers}
"""


def python_env(run_dir: Path, port: int, profile: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TESTBED_", "OTEL_"))}
    env.update(
        {
            "TESTBED_PORT": str(port),
            "TESTBED_RUN_DIR": str(run_dir),
            "TESTBED_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "0",
        }
    )
    env.update(profile)
    return env


@dataclass(frozen=True)
class Figures:
    """The four goal figures of one configuration (throughput ratio None without HAProxy)."""

    lb_ratio: float | None
    added_p50_ms: float
    added_p99_ms: float
    cdn_ratio: float


@dataclass(frozen=True)
class Hops:
    """One configuration's figures, each hop with its reference measured just before it (the
    machine's load drifts: neighbours count)."""

    lb: WrkResult
    lb1: WrkResult
    pop: WrkResult
    ha: WrkResult | None
    """HAProxy, just before ``lb`` (None without HAProxy)."""
    bare: WrkResult
    """The bare handler, just before ``pop``."""


def figures(direct1: WrkResult, hops: Hops) -> Figures:
    """The ratios of one configuration; ``direct1``: the backend called directly, one
    connection (the latency reference)."""
    return Figures(
        lb_ratio=None if hops.ha is None else hops.lb.rps / hops.ha.rps,
        added_p50_ms=hops.lb1.p50_ms - direct1.p50_ms,
        added_p99_ms=hops.lb1.p99_ms - direct1.p99_ms,
        cdn_ratio=hops.pop.rps / hops.bare.rps,
    )


def ratio_line(name: str, value: float, goal: str, ok: bool) -> str:
    return f"  {name:<58} {value:>8.2f}   goal {goal:<10} {'MET' if ok else 'NOT MET'}"


def figure_lines(f: Figures) -> list[str]:
    lines = []
    if f.lb_ratio is not None:
        lines.append(
            ratio_line("balancer / HAProxy throughput", f.lb_ratio, ">= 0.6", f.lb_ratio >= 0.6)
        )
    lines.append(
        ratio_line("added latency p50 (ms)", f.added_p50_ms, "<= 0.5", f.added_p50_ms <= 0.5)
    )
    lines.append(
        ratio_line("added latency p99 (ms)", f.added_p99_ms, "<= 1.5", f.added_p99_ms <= 1.5)
    )
    lines.append(
        ratio_line("CDN hits / bare aiohttp handler", f.cdn_ratio, ">= 0.8", f.cdn_ratio >= 0.8)
    )
    return lines


def median_figures(runs: list[Figures]) -> Figures:
    ratios = [f.lb_ratio for f in runs if f.lb_ratio is not None]
    return Figures(
        lb_ratio=statistics.median(ratios) if ratios else None,
        added_p50_ms=statistics.median(f.added_p50_ms for f in runs),
        added_p99_ms=statistics.median(f.added_p99_ms for f in runs),
        cdn_ratio=statistics.median(f.cdn_ratio for f in runs),
    )


def print_hops(label: str, hops: Hops, conns: int) -> None:
    print(f"\n[{label}] {DESCRIPTIONS[label]}")
    if hops.ha is not None:
        print(
            f"  (HAProxy, nbthread 1, just before: {hops.ha.rps:,.0f} req/s"
            + hops.ha.cpu_text("HAProxy")
            + ")"
        )
    print(
        f"balancer, {conns} connections: {hops.lb.rps:,.0f} req/s (errors {hops.lb.errors})"
        + hops.lb.cpu_text("balancer")
    )
    print(f"balancer, 1 connection: p50 {hops.lb1.p50_ms:.3f} ms, p99 {hops.lb1.p99_ms:.3f} ms")
    print(
        f"CDN PoP hits, {conns} connections: {hops.pop.rps:,.0f} req/s (errors {hops.pop.errors})"
        + hops.pop.cpu_text("PoP")
    )
    print(
        f"  (bare aiohttp handler, same bytes, just before: {hops.bare.rps:,.0f} req/s"
        + hops.bare.cpu_text("handler")
        + ")"
    )


def measure_hops(
    lb: subprocess.Popen[bytes],
    lb_port: int,
    pop: subprocess.Popen[bytes],
    pop_port: int,
    conns: int,
    duration: float,
    refs: References,
) -> Hops:
    """The hops under test, each right after its reference (HAProxy, the bare handler)."""
    lb_url = f"http://127.0.0.1:{lb_port}{PATH}"
    pop_url = f"http://127.0.0.1:{pop_port}{PATH}"
    wrk(lb_url, connections=conns, duration=1.0)  # warm-up: pools, caches
    ha = refs.haproxy(conns, duration)
    lb_result = wrk(lb_url, connections=conns, duration=duration, cpu_of=lb.pid)
    lb1 = wrk(lb_url, connections=1, duration=duration)
    wrk(pop_url, connections=conns, duration=1.0)  # fills the cache
    bare = refs.bare(conns, duration)
    pop_result = wrk(pop_url, connections=conns, duration=duration, cpu_of=pop.pid)
    return Hops(lb=lb_result, lb1=lb1, pop=pop_result, ha=ha, bare=bare)


@dataclass(frozen=True)
class References:
    """Where HAProxy and the bare handler listen, to measure them next to each hop."""

    bare_url: str
    bare_pid: int
    ha_url: str | None = None
    ha_pid: int | None = None

    def haproxy(self, conns: int, duration: float) -> WrkResult | None:
        if self.ha_url is None:
            return None
        return wrk(self.ha_url, connections=conns, duration=duration, cpu_of=self.ha_pid)

    def bare(self, conns: int, duration: float) -> WrkResult:
        return wrk(self.bare_url, connections=conns, duration=duration, cpu_of=self.bare_pid)


def one_run(py: str, conns: int, duration: float, have_haproxy: bool) -> dict[str, Figures]:
    """Every figure once, side by side; returns them by configuration."""
    results: dict[str, Figures] = {}
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp, processes() as procs:
        run_dir = Path(tmp)
        backends = [free_port(), free_port()]
        backend_procs = [
            procs.start([py, "-m", "edge.bench", "backend", str(port)]) for port in backends
        ]
        for port in backends:
            wait_http(f"http://127.0.0.1:{port}/readyz")
        direct = f"http://127.0.0.1:{backends[0]}{PATH}"
        print(f"load average at start {os.getloadavg()[0]:.2f}")

        ha_url: str | None = None
        ha_pid: int | None = None
        if have_haproxy:
            ha_port = free_port()
            cfg = run_dir / "haproxy.cfg"
            cfg.write_text(haproxy_config(ha_port, backends))
            haproxy = procs.start(["haproxy", "-f", str(cfg), "-db"])
            ha_url, ha_pid = f"http://127.0.0.1:{ha_port}{PATH}", haproxy.pid
            wait_http(ha_url)
            wrk(ha_url, connections=conns, duration=1.0)  # warm-up

        wrk(direct, connections=1, duration=1.0)  # warm-up
        direct1 = wrk(direct, connections=1, duration=duration)
        print(
            f"backend direct, 1 connection: p50 {direct1.p50_ms:.3f} ms, "
            f"p99 {direct1.p99_ms:.3f} ms"
        )
        refs = References(
            bare_url=direct, bare_pid=backend_procs[0].pid, ha_url=ha_url, ha_pid=ha_pid
        )
        upstreams = ",".join(f"127.0.0.1:{p}" for p in backends)

        for label, profile in PROFILES.items():
            lb_port, pop_port = free_port(), free_port()
            lb_env = python_env(run_dir, lb_port, profile)
            lb_env.update({"TESTBED_UPSTREAMS": f"gateway={upstreams}"})
            lb_env["TESTBED_INSTANCE_ID"] = f"lb-{lb_port}"
            lb_proc = procs.start([py, "-m", "edge.balancer"], lb_env)
            pop_env = python_env(run_dir, pop_port, profile)
            pop_env.update(
                {"CDN_ORIGIN_URL": f"http://127.0.0.1:{lb_port}", "TESTBED_REGION": "us"}
            )
            pop_env["TESTBED_INSTANCE_ID"] = f"pop-{pop_port}"
            pop_proc = procs.start([py, "-m", "edge.cdn"], pop_env)
            wait_http(f"http://127.0.0.1:{lb_port}/readyz")
            wait_http(f"http://127.0.0.1:{pop_port}/readyz")
            hops = measure_hops(lb_proc, lb_port, pop_proc, pop_port, conns, duration, refs)
            procs.stop(pop_proc)  # one configuration at a time on the machine
            procs.stop(lb_proc)
            print_hops(label, hops, conns)
            results[label] = figures(direct1, hops)

        lb_core, pop_core = free_port(), free_port()
        core_lb = procs.start([py, "-m", "edge.bench", "lb-core", str(lb_core), upstreams])
        wait_http(f"http://127.0.0.1:{lb_core}{PATH}")
        origin = f"http://127.0.0.1:{lb_core}"
        core_pop = procs.start([py, "-m", "edge.bench", "pop-core", str(pop_core), origin])
        wait_http(f"http://127.0.0.1:{pop_core}{PATH}")
        hops = measure_hops(core_lb, lb_core, core_pop, pop_core, conns, duration, refs)
        procs.stop(core_pop)
        procs.stop(core_lb)
        print_hops(CORE, hops, conns)
        results[CORE] = figures(direct1, hops)
        traces = sorted((run_dir / "traces").glob("*.jsonl"))
        size = sum(p.stat().st_size for p in traces)
        print(f"\nspan files written: {len(traces)} ({size / 1e6:.1f} MB)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (other load skews all)")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.bench", description=__doc__)
    parser.add_argument(
        "mode", nargs="?", default="bench", choices=("bench", "backend", "lb-core", "pop-core")
    )
    parser.add_argument("port", nargs="?", type=int)
    parser.add_argument("target", nargs="?", help="lb-core: host:port,...; pop-core: origin URL")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--runs", type=int, default=1, help="repeat and print medians")
    args = parser.parse_args(argv)
    if args.mode == "backend":
        serve_backend(args.port)
        return 0
    if args.mode in ("lb-core", "pop-core"):
        serve_core(args.mode, args.port, args.target)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is missing: install it with `apt-get install -y wrk` (Debian).")
        return 2
    have_haproxy = shutil.which("haproxy") is not None
    if not have_haproxy:
        print("haproxy is missing: `apt-get install -y haproxy` (Debian); skipping that figure.")
    duration, conns = args.duration, args.connections
    print(f"wrk -t1, {duration:g}s per run; backends: 2 bare aiohttp processes; 512 B body")
    print(f"machine: {os.cpu_count()} cores; Python {sys.version.split()[0]}")
    print(f"event loop of every Python process: {event_loop_name()}")
    for label in (*PROFILES, CORE):
        settings = " ".join(f"{k}={v}" for k, v in PROFILES.get(label, {}).items()) or "-"
        print(f"  [{label}] {settings}")
    runs: list[dict[str, Figures]] = []
    for i in range(max(1, args.runs)):
        if args.runs > 1:
            print(f"\n=== run {i + 1} of {args.runs}")
        runs.append(one_run(sys.executable, conns, duration, have_haproxy))
    title = "Ratios (measured side by side in this run)"
    if len(runs) > 1:
        title = f"Ratios (median of {len(runs)} runs, each measured side by side)"
    print(f"\n{title}:")
    for label in (DEFAULT, TRACED, CORE):
        print(f"[{label}]" + (" <- headline: what `testbed up` runs" if label == DEFAULT else ""))
        print("\n".join(figure_lines(median_figures([r[label] for r in runs]))))
    print(
        "\nWhat limits them (see the CPU per request printed with each figure): one Python"
        "\nprocess per hop on a shared 2-core machine, so wrk, the backends and the hop under"
        "\ntest compete for the same cores, and every microsecond the hop spends is one its"
        "\nbackends lose. On the wire lane a PoP hit is a head parsed by httptools, a cache"
        "\nlookup and one write: less than a bare aiohttp handler, whose CPU is mostly"
        "\naiohttp's server side. The balancer adds to the same front the upstream exchange"
        "\n(its httptools client), the header rewriting, the trace ids sent on, the metrics"
        "\nand the 100 traced requests a second; HAProxy does the whole hop in C for a"
        "\nfraction of that. Tracing every request adds a recorded span, its span-file record"
        "\nand a log line to each request."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
