"""Benchmark: cold ``testbed up`` to all-ready time, and the stack's memory (sum of RSS).

``python -m management.bench_up [--topology FILE] [--base-port N] [--runs N]`` starts the stack
with the real CLI in a fresh run folder, times it until ``up`` returns (every instance ready),
sums the resident set of every process the stack runs (supervisord, Toxiproxy, Prometheus,
Jaeger and the trace UI when present, every instance), stops it with ``testbed down`` and prints
both figures next to their goals (<= 15 s, <= 1.5 GB), and what the trace UI (Zipkin and its
span shipper) takes of the memory. ``--no-trace-ui`` measures the stack without it. Not a test:
timings depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from management.plan import port_span
from management.ports import port_is_free
from management.stack import _marked_pids
from management.topology import load_topology

GOAL_SECONDS = 15.0
GOAL_BYTES = 1.5 * 1024**3


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _free_base(span: int) -> int:
    for base in range(20000, 32000 - span, 500):
        if all(port_is_free(p) for p in range(base, base + span)):
            return base
    raise SystemExit("no free port range below 32000 for the stack")


def _is_trace_ui(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"zipkin" in cmdline


def _trace_ui_ready_after(base: int, started: float, within: float = 120.0) -> float | None:
    """Seconds from ``started`` until Zipkin (``B+6``) answers /health, or None."""
    url = f"http://127.0.0.1:{base + 6}/health"
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1.0) as resp:
            if resp.status == 200:
                return time.monotonic() - started
        time.sleep(0.2)
    return None


def _one_run(
    testbed: str, topology: str | None, base: int, env: dict[str, str], extra: list[str]
) -> tuple[float, int, int, int, float | None]:
    run_dir = Path(tempfile.mkdtemp(prefix="testbed-bench-"))
    cmd = [testbed, "up", "--run-dir", str(run_dir), "--base-port", str(base), *extra]
    if topology:
        cmd += ["--topology", topology]
    started = time.monotonic()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    try:
        if result.returncode != 0:
            raise SystemExit(f"testbed up failed:\n{result.stdout}\n{result.stderr}")
        trace_ui_s = None if extra else _trace_ui_ready_after(base, started)
        time.sleep(1.0)  # let the first scrapes and heartbeats happen: memory at rest
        pids = _marked_pids(run_dir.resolve())
        supervisord = (run_dir / "supervisord.pid").read_text().strip()
        pids.append(int(supervisord))
        total = sum(_rss_bytes(pid) for pid in set(pids))
        trace_ui = sum(_rss_bytes(pid) for pid in set(pids) if _is_trace_ui(pid))
        return elapsed, total, len(set(pids)), trace_ui, trace_ui_s
    finally:
        subprocess.run(
            [testbed, "down", "--run-dir", str(run_dir)], env=env, capture_output=True, timeout=120
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--topology", default=None, help="topology file (default: shipped one)")
    parser.add_argument("--base-port", type=int, default=None)
    parser.add_argument("--runs", type=int, default=1, help="repeat and report each run")
    parser.add_argument(
        "--no-trace-ui", action="store_true", help="start the stack without the trace UI"
    )
    args = parser.parse_args()
    extra = ["--no-trace-ui"] if args.no_trace_ui else []
    topo = load_topology(args.topology)
    base = args.base_port or _free_base(port_span(len(topo.components)))
    testbed = str(Path(sys.executable).parent / "testbed")
    env = dict(os.environ)
    env["TESTBED_STATE_DIR"] = tempfile.mkdtemp(prefix="testbed-bench-state-")
    worst_time, worst_rss = 0.0, 0
    for i in range(args.runs):
        seconds, rss, count, trace_ui, trace_ui_s = _one_run(
            testbed, args.topology, base, env, extra
        )
        worst_time, worst_rss = max(worst_time, seconds), max(worst_rss, rss)
        print(
            f"run {i + 1}: cold up to all-ready {seconds:.1f} s; "
            f"{count} processes, total RSS {rss / 1024**2:.0f} MiB"
            + (f", of which the trace UI {trace_ui / 1024**2:.0f} MiB" if trace_ui else "")
            + (f"; trace UI answering after {trace_ui_s:.1f} s" if trace_ui_s else "")
        )
    ok_time = "ok" if worst_time <= GOAL_SECONDS else "OVER GOAL"
    ok_rss = "ok" if worst_rss <= GOAL_BYTES else "OVER GOAL"
    print(f"up to all-ready: {worst_time:.1f} s (goal <= {GOAL_SECONDS:.0f} s) {ok_time}")
    print(f"stack memory:    {worst_rss / 1024**3:.2f} GB (goal <= 1.5 GB) {ok_rss}")


if __name__ == "__main__":
    main()
