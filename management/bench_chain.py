"""Benchmark: the full chain, microservices against the monolith, default sampling against
every request traced, side by side in one run.

``python -m management.bench_chain [--duration 10] [--connections 16] [--p99-ms 1000]``
starts, one after the other on fresh stacks, the default topology (five services, each its own
process) and ``management/topology.monolith.yaml`` (the same code in one process, the same
edge), each with the default trace sampling and with ``OTEL_TRACES_SAMPLER=
parentbased_always_on`` on every process. On each it drives the whole chain, PoP (region
``us``) -> balancer -> gateway -> services, with ``wrk`` (one thread):

``product``   ``GET /api/products/p-001`` with ``Cache-Control: no-cache``, so the PoP goes
              to the origin every time (the gateway then calls catalog, inventory and
              recommendations);
``checkout``  ``POST /api/checkout``, one item, a fresh ``Idempotency-Key`` per request (the
              saga: catalog, inventory reserve/commit, payments).

For each it reports the throughput at the highest connection count (from ``--connections``,
halving) whose p99 stays within ``--p99-ms``, p50 and p99, non-2xx answers, and the CPU per
request: the CPU seconds every process of the stack spent during the run (from /proc), per
component, divided by the requests served. Not a test: figures depend on the machine (state
its load when quoting them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from management.plan import port_span
from management.ports import port_is_free
from management.stack import Stack, down, up
from management.topology import default_topology_path, load_topology

MONOLITH = Path(__file__).with_name("topology.monolith.yaml")
TOPOLOGIES = {"microservices": default_topology_path(), "monolith": MONOLITH}
SAMPLINGS = {"default": None, "every request": "parentbased_always_on"}
_TICK = os.sysconf("SC_CLK_TCK")

_PRODUCT_LUA = """
wrk.method = "GET"
wrk.headers["X-API-Key"] = "demo-key"
wrk.headers["Cache-Control"] = "no-cache"
"""
_CHECKOUT_LUA = """
local n = 0
local tag = string.format("%d", math.random(1, 1000000000))
request = function()
  n = n + 1
  local product = string.format("p-%03d", (n % 100) + 1)
  local body = '{"items":[{"product_id":"' .. product .. '","quantity":1}]}'
  local headers = {}
  headers["X-API-Key"] = "demo-key"
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = "bench-" .. tag .. "-" .. n
  return wrk.format("POST", "/api/checkout", headers, body)
end
"""


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    connections: int
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_ms_per_request(self) -> float:
        ok = max(self.requests - self.non_2xx, 1)
        return 1000 * sum(self.cpu_seconds.values()) / ok


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(text: str) -> tuple[float, float, float, int, int]:
    """Requests/s, p50 ms, p99 ms, requests, non-2xx answers from ``wrk --latency``."""
    found = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if found is None:
        raise SystemExit(f"wrk printed no throughput; its output:\n{text}")
    rps = float(found.group(1))
    lat: dict[str, float] = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        lat[pct] = _ms(value, unit)
    done = re.search(r"(\d+) requests in", text)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    failed = int(bad.group(1)) if bad else 0
    if errors:
        failed += sum(int(g) for g in errors.groups())
    return rps, lat.get("50", 0.0), lat.get("99", 0.0), int(done.group(1)) if done else 0, failed


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


async def _pids(stack: Stack) -> dict[int, str]:
    rows = await stack.status()
    return {r.pid: r.component for r in rows if r.pid}


async def _wrk(url: str, script: Path, connections: int, duration: float) -> str:
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return out.decode()


async def measure(
    stack: Stack, url: str, script: Path, connections: int, duration: float
) -> Result:
    pids = await _pids(stack)
    before = {pid: _cpu_ticks(pid) for pid in pids}
    text = await _wrk(url, script, connections, duration)
    after = {pid: _cpu_ticks(pid) for pid in pids}
    rps, p50, p99, requests, failed = parse_wrk(text)
    cpu: dict[str, float] = {}
    for pid, component in pids.items():
        cpu[component] = cpu.get(component, 0.0) + (after[pid] - before[pid]) / _TICK
    return Result(rps, p50, p99, requests, failed, connections, cpu)


async def at_p99(
    stack: Stack, url: str, script: Path, connections: int, duration: float, p99_ms: float
) -> Result:
    """The run at the most connections (halving from ``connections``) within the p99 goal."""
    result = await measure(stack, url, script, connections, duration)
    while result.p99_ms > p99_ms and result.connections > 1:
        result = await measure(stack, url, script, result.connections // 2, duration)
    return result


def _topology_file(source: Path, sampler: str | None, folder: Path) -> Path:
    if sampler is None:
        return source
    data = load_topology(source).to_data()
    for component in data["components"].values():
        component.setdefault("env", {})["OTEL_TRACES_SAMPLER"] = sampler
    path = folder / f"{source.stem}.{sampler}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _free_base(span: int) -> int:
    for base in range(22000, 32000 - span, 300):
        if all(port_is_free(p) for p in range(base, base + span)):
            return base
    raise SystemExit("no free port range found")


async def run_variant(
    topology: Path, run_dir: Path, args: argparse.Namespace, scripts: dict[str, Path]
) -> dict[str, Result]:
    topo = load_topology(topology)
    base = _free_base(port_span(len(topo.components)))
    stack = await up(topology=topology, run_dir=run_dir, base_port=base, jaeger=False, within=240)
    try:
        pop = stack.plan.instance("cdn-us").url
        await measure(stack, f"{pop}/api/products/p-001", scripts["product"], 4, 3)  # warm-up
        results = {}
        for name, path in (("product", "/api/products/p-001"), ("checkout", "/api/checkout")):
            results[name] = await at_p99(
                stack, pop + path, scripts[name], args.connections, args.duration, args.p99_ms
            )
        return results
    finally:
        await asyncio.to_thread(down, run_dir)


def _print(label: str, results: dict[str, Result]) -> None:
    for name, r in results.items():
        top = sorted(r.cpu_seconds.items(), key=lambda kv: -kv[1])
        ok = max(r.requests - r.non_2xx, 1)
        per = ", ".join(f"{c} {1000 * s / ok:.1f}" for c, s in top if s > 0)
        print(
            f"{label:<34} {name:<9} {r.rps:7.1f} req/s  p50 {r.p50_ms:6.1f} ms  "
            f"p99 {r.p99_ms:6.1f} ms  c={r.connections:<3} non-2xx {r.non_2xx:<4} "
            f"CPU {r.cpu_ms_per_request:5.1f} ms/req ({per})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m management.bench_chain", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--p99-ms", type=float, default=1000.0)
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.1f} (2 cores shared)")
    table: dict[tuple[str, str], dict[str, Result]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
        folder = Path(tmp)
        os.environ.setdefault("TESTBED_STATE_DIR", str(folder / "state"))
        scripts = {"product": folder / "product.lua", "checkout": folder / "checkout.lua"}
        scripts["product"].write_text(_PRODUCT_LUA)
        scripts["checkout"].write_text(_CHECKOUT_LUA)
        for sampling, sampler in SAMPLINGS.items():
            for kind, source in TOPOLOGIES.items():
                topology = _topology_file(source, sampler, folder)
                run_dir = folder / f"{kind}-{sampler or 'default'}"
                label = f"{kind}, sampling {sampling}"
                results = asyncio.run(run_variant(topology, run_dir, args, scripts))
                table[(kind, sampling)] = results
                _print(label, results)
                sys.stdout.flush()
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    for name in ("product", "checkout"):
        micro = table[("microservices", "default")][name].rps
        mono = table[("monolith", "default")][name].rps
        traced = table[("microservices", "every request")][name].rps
        print(
            f"{name}: microservices / monolith {micro / mono:.2f}x (goal >= 0.4); "
            f"every request traced / default {traced / micro:.2f}x (goal >= 0.7)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
