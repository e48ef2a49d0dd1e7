"""Per-instance process metrics from Prometheus, kept beside a run's spans (optional telemetry).

A CPU burn or a memory leak leaves no mark on spans unless the host runs out of headroom;
``process_cpu_seconds_total`` and ``process_resident_memory_bytes`` (every process exports
them: ``observability.app``'s ``ProcessCollector``) single out the instance; so does ``up``
(a stopped, frozen or crashed process fails its scrapes). The requests in flight and the
request and 5xx rates per instance are kept beside them for reading, not judged by the
localiser: they rise or fall at every caller up the chain of a faulty callee. ``fetch`` reads
both per instance over a time range (bounded by a deadline) while the stack still runs, and
``save``/``load`` keep them as ``metrics.json`` in the run folder so the blind localiser can be
run again later, after the stack is gone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["QUERIES", "Series", "fetch", "load", "save"]

Series = dict[str, dict[str, list[tuple[float, float]]]]
"""metric -> instance -> [(unix seconds, value)]."""

QUERIES = {
    "cpu": "sum by (instance) (rate(process_cpu_seconds_total[3s]))",
    "rss_mb": "sum by (instance) (process_resident_memory_bytes) / 1e6",
    # Whether the scrape answered: a stopped, frozen or killed process fails its scrapes.
    "up": "max by (instance) (up)",
    # Kept to read beside the spans; the localiser does not judge them (see above).
    "in_flight": "sum by (instance) (http_server_requests_in_flight)",
    "req_rate": "sum by (instance) (rate(http_server_requests_total[3s]))",
    "err_rate": 'sum by (instance) (rate(http_server_requests_total{code=~"5.."}[3s]))',
}
FILE = "metrics.json"


async def fetch(
    prometheus_url: str, start: float, end: float, *, step_s: float = 1.0, within: float = 15.0
) -> Series:
    """Each of ``QUERIES`` over ``[start, end]`` per instance; raises on an error answer."""
    out: Series = {}
    timeout = aiohttp.ClientTimeout(total=within)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for name, query in QUERIES.items():
            params = {"query": query, "start": str(start), "end": str(end), "step": str(step_s)}
            async with session.get(f"{prometheus_url}/api/v1/query_range", params=params) as resp:
                body: dict[str, Any] = await resp.json()
            if resp.status != 200 or body.get("status") != "success":
                raise ValueError(f"Prometheus answered {resp.status}: {str(body)[:200]}")
            out[name] = {
                str(r["metric"].get("instance", "")): [(float(t), float(v)) for t, v in r["values"]]
                for r in body["data"]["result"]
            }
    return out


def save(run_dir: Path, series: Mapping[str, Any]) -> None:
    (run_dir / FILE).write_text(json.dumps(series))


def load(run_dir: Path) -> Series | None:
    path = run_dir / FILE
    if not path.exists():
        return None
    raw = json.loads(path.read_text("utf-8"))
    return {
        metric: {inst: [(float(t), float(v)) for t, v in pts] for inst, pts in per.items()}
        for metric, per in raw.items()
    }
