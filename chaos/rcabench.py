"""``testbed chaos rca-bench``: a fault catalogue run on fresh stacks, localised blind, scored.

Every case is one fault (or a fault and a concurrent, milder *decoy* on a busier service)
injected under Locust load. Cases run in groups, one fresh stack per group: inside a group
they run one after another as one experiment (a ``sequence`` of quiet gap, fault, quiet
gap, ...), so each fault is fully rolled back and followed by a quiet gap before the next.
Why groups rather than a stack per case: a stack takes tens of seconds to come up on two
cores, 36 stacks would double the bench's length, and the runner's rollback already puts
every fault back (a kill or a crash is followed by the supervisor's restart and the gap).
Grouping by fault family also keeps the damage of one family (a crash mid-checkout, a
memory leak) away from the cases of another.

The gaps are drawn from the seed, so a fault does not always start at the same offset of its
segment. After a group's run, each case gets its *segment* of telemetry: from the previous
case's rollback plus ``SETTLE_S`` to its own rollback plus ``TAIL_S``. The blind localiser
(``chaos.blind``) sees only the spans of that segment — not the injection time, not the
target — and must find the anomaly window itself. The journal is read afterwards, only to
score (``chaos.rcascore``). The window-given localiser's verdicts (``chaos.localize``, which
does get the journal's times) are kept beside, labelled as such.

``--rescore DIR`` localises and scores a finished bench folder again without running anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from chaos import procmetrics
from chaos.blind import BlindResult, localize_blind
from chaos.faults.processes import SupervisorControl
from chaos.model import Experiment
from chaos.rcascore import Truth, rank_of, summarize, truth_from_units
from chaos.runner import Runner, RunResult
from chaos.stack import from_management
from management.ports import port_is_free
from management.stack import down, up
from management.topology import load_topology
from observability.spans import SpanRecord, load_spans

__all__ = [
    "CATALOGUE",
    "QUICK",
    "Case",
    "bench_cases",
    "run_bench",
    "score_bench",
]

SETTLE_S = 3.0
"""A segment starts this long after the previous case's rollback (restarts, drained queues)."""
TAIL_S = 3.0
"""A segment ends this long after its case's rollback (the last spans of the fault)."""


@dataclass(frozen=True)
class Timing:
    """How long each fault holds, and the quiet gap before it (drawn from the seed between
    the two bounds): the fault is at most a third of its segment."""

    fault_s: float
    gap_s: tuple[float, float]


FULL = Timing(20.0, (40.0, 50.0))
"""The bench: each fault long enough that the quietest instance (payments, about one call a
second) serves five or more affected calls at the catalogue's mildest intensity (30%). At 8 s,
a 30% hang there was one or two hung calls, which nothing can tell from chance."""
SMOKE = Timing(8.0, (14.0, 20.0))
"""``--quick``: the smoke test's shorter segments (its cases are not the sparse ones)."""
USERS = 12
STACK_UP_S = 300.0
"""How long a stack may take to be ready: the bench runs for long on a machine others share."""
CHECKOUT_WEIGHT = 8
"""Checkouts weigh as much as browsing and product pages together: orders, payments and
inventory see a few calls a second each, enough for a quiet instance's silence to mean something."""


@dataclass(frozen=True)
class Case:
    """One bench case: a fault (``target`` as in an experiment file) and an optional decoy."""

    name: str
    fault: Mapping[str, Any]
    decoy: Mapping[str, Any] | None = None
    group: str = "network"

    @property
    def type(self) -> str:
        return str(self.fault["type"]) + (" + decoy" if self.decoy else "")


def _c(name: str, group: str, fault: dict[str, Any], decoy: dict[str, Any] | None = None) -> Case:
    return Case(name, fault, decoy, group)


def _svc(name: str) -> dict[str, Any]:
    return {"service": name}


def _link(name: str) -> dict[str, Any]:
    return {"link": name}


CATALOGUE: tuple[Case, ...] = (
    # -- network: toxics on one instance's proxy, and on links ---------------------------------
    _c("payments-latency", "network", {"type": "network.latency", "target": _svc("payments"),
       "blast_radius": "one", "latency_ms": 300}),
    _c("inventory-timeout", "network", {"type": "network.timeout", "target": _svc("inventory"),
       "timeout_ms": 0}),
    _c("catalog-reset", "network", {"type": "network.reset_peer", "target": _svc("catalog"),
       "blast_radius": "one"}),
    _c("recommendations-bandwidth", "network", {"type": "network.bandwidth",
       "target": _svc("recommendations"), "rate_kbps": 1}),
    _c("orders-slicer", "network", {"type": "network.slicer", "target": _svc("orders"),
       "blast_radius": "one", "average_size": 16, "delay_us": 20000}),
    _c("payments-limit-data", "network", {"type": "network.limit_data",
       "target": _svc("payments"), "blast_radius": "one", "bytes": 300}),
    _c("catalog-down", "network", {"type": "network.down", "target": _svc("catalog"),
       "blast_radius": "one"}),
    _c("link-cdn-sa-latency", "network", {"type": "network.latency",
       "target": _link("cdn-sa->balancer"), "latency_ms": 400}),
    _c("link-cdn-eu-down", "network", {"type": "network.down",
       "target": _link("cdn-eu->balancer")}),
    _c("link-orders-payments-reset", "network", {"type": "network.reset_peer",
       "target": _link("orders->payments"), "blast_radius": "one"}),
    _c("link-gateway-orders-latency", "network", {"type": "network.latency",
       "target": _link("gateway->orders"), "blast_radius": "one", "latency_ms": 300}),
    _c("link-orders-inventory-timeout", "network", {"type": "network.timeout",
       "target": _link("orders->inventory"), "timeout_ms": 0}),
    _c("link-balancer-gateway-latency", "network", {"type": "network.latency",
       "target": _link("balancer->gateway"), "blast_radius": "one", "latency_ms": 300}),
    # -- process: kill -9, SIGSTOP, graceful stop --------------------------------------------
    _c("orders-kill", "process", {"type": "process.kill", "target": _svc("orders"),
       "blast_radius": "one"}),
    _c("catalog-kill", "process", {"type": "process.kill", "target": _svc("catalog"),
       "blast_radius": "one"}),
    _c("gateway-kill", "process", {"type": "process.kill", "target": _svc("gateway"),
       "blast_radius": "one"}),
    _c("payments-freeze", "process", {"type": "process.freeze", "target": _svc("payments"),
       "blast_radius": "one"}),
    _c("recommendations-freeze", "process", {"type": "process.freeze",
       "target": _svc("recommendations")}),
    _c("inventory-stop", "process", {"type": "process.stop", "target": _svc("inventory")}),
    _c("catalog-stop", "process", {"type": "process.stop", "target": _svc("catalog"),
       "blast_radius": "one"}),
    # -- in-service faults --------------------------------------------------------------------
    _c("catalog-errors", "service", {"type": "service.error_rate", "target": _svc("catalog"),
       "blast_radius": "one", "rate": 0.5}),
    _c("inventory-errors", "service", {"type": "service.error_rate",
       "target": _svc("inventory"), "rate": 0.5}),
    _c("orders-latency", "service", {"type": "service.latency", "target": _svc("orders"),
       "blast_radius": "one", "latency_ms": 200}),
    _c("recommendations-latency", "service", {"type": "service.latency",
       "target": _svc("recommendations"), "latency_ms": 200}),
    _c("payments-hang", "service", {"type": "service.hang", "target": _svc("payments"),
       "blast_radius": "one", "rate": 0.3}),
    _c("catalog-cpu", "service", {"type": "service.cpu_burn", "target": _svc("catalog"),
       "blast_radius": "one", "share": 1.0}),
    _c("orders-cpu", "service", {"type": "service.cpu_burn", "target": _svc("orders"),
       "blast_radius": "one", "share": 1.0}),
    _c("payments-memory", "service", {"type": "service.memory_leak",
       "target": _svc("payments"), "blast_radius": "one", "mb_per_second": 20, "max_mb": 200}),
    _c("orders-crash-after-charge", "service", {"type": "service.crash_after",
       "target": _svc("orders"), "blast_radius": "one", "points": ["charged"]}),
    _c("payments-crash-after-pending", "service", {"type": "service.crash_after",
       "target": _svc("payments"), "blast_radius": "one", "points": ["charge_pending"]}),
    # -- concurrent pairs: the fault, and a milder slowdown on a busier service -----------------
    _c("decoy-payments-latency", "decoy", {"type": "service.latency",
       "target": _svc("payments"), "blast_radius": "one", "latency_ms": 300},
       {"type": "service.latency", "target": _svc("catalog"), "latency_ms": 40}),
    _c("decoy-inventory-net", "decoy", {"type": "network.latency", "target": _svc("inventory"),
       "latency_ms": 200},
       {"type": "network.latency", "target": _svc("catalog"), "blast_radius": "one",
        "latency_ms": 30}),
    _c("decoy-recommendations-errors", "decoy", {"type": "service.error_rate",
       "target": _svc("recommendations"), "rate": 0.3},
       {"type": "service.latency", "target": _svc("catalog"), "latency_ms": 30}),
    _c("decoy-orders-freeze", "decoy", {"type": "process.freeze", "target": _svc("orders"),
       "blast_radius": "one"},
       {"type": "network.latency", "target": _svc("catalog"), "latency_ms": 40}),
    _c("decoy-payments-errors", "decoy", {"type": "service.error_rate",
       "target": _svc("payments"), "blast_radius": "one", "rate": 0.3},
       {"type": "service.error_rate", "target": _svc("catalog"), "rate": 0.03}),
    _c("decoy-cdn-us-latency", "decoy", {"type": "network.latency",
       "target": _link("cdn-us->balancer"), "latency_ms": 300},
       {"type": "service.latency", "target": _svc("catalog"), "latency_ms": 30}),
)  # fmt: skip

QUICK: tuple[str, ...] = (
    "payments-latency",
    "catalog-errors",
    "orders-kill",
    "decoy-payments-latency",
)
"""``--quick``: one case of each kind, on one stack."""


def bench_cases(*, quick: bool = False, only: Sequence[str] = ()) -> list[Case]:
    names = only or (QUICK if quick else ())
    if not names:
        return list(CATALOGUE)
    by_name = {c.name: c for c in CATALOGUE}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"no bench case {', '.join(unknown)}; known: {', '.join(by_name)}")
    # A short run shares one stack: a stack per family costs more than the cases themselves.
    return [dataclasses.replace(by_name[n], group="quick") for n in names]


# -- running -------------------------------------------------------------------------------------


def _experiment(cases: Sequence[Case], seed: int, group: str, timing: Timing) -> Experiment:
    rng = random.Random(f"{seed}:{group}")
    steps: list[dict[str, Any]] = []
    for case in cases:
        steps.append({"pause": round(rng.uniform(*timing.gap_s), 1)})
        fault = {**case.fault, "name": f"{case.name}", "duration": timing.fault_s}
        if case.decoy is None:
            steps.append({"fault": fault})
        else:
            decoy = {**case.decoy, "name": f"{case.name}--decoy", "duration": timing.fault_s}
            steps.append({"parallel": [{"fault": fault}, {"fault": decoy}]})
    steps.append({"pause": timing.gap_s[0]})
    method_s = sum(float(s.get("pause", timing.fault_s)) for s in steps) + 30.0 * len(cases)
    doc = {
        "title": f"rca-bench {group}",
        "hypothesis": "every fault is located blind from the telemetry",
        "seed": seed,
        "load": {
            "users": USERS,
            "duration": method_s + 60.0,
            "warmup": 8,
            "checkout_weight": CHECKOUT_WEIGHT,
        },
        "method": steps,
        "settle": 1.0,
    }
    return Experiment.model_validate(doc)


def _groups(cases: Sequence[Case]) -> list[tuple[str, list[Case]]]:
    out: dict[str, list[Case]] = {}
    for case in cases:
        out.setdefault(case.group, []).append(case)
    return list(out.items())


Progress = Callable[[str], None]
PORT_SPAN = 400


def free_port_range() -> int:
    """A base port with ``PORT_SPAN`` free ports above it (other stacks may share the host)."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(21000, 32000 - PORT_SPAN, 10)
        if all(port_is_free(p) for p in range(base, base + PORT_SPAN)):
            return base
    raise ValueError("no free range of ports found; give --base-port")


async def _run_group(
    folder: Path,
    group: str,
    cases: Sequence[Case],
    *,
    seed: int,
    base_port: int | None,
    progress: Progress,
    timing: Timing,
) -> Path:
    """Bring a fresh stack up, run the group's experiment, stop the stack; the journal's path."""
    stack_dir = folder / f"stack-{group}"
    topo_file = folder / "topology.yaml"
    started = time.monotonic()
    port = base_port or await asyncio.to_thread(free_port_range)
    stack = await up(
        topology=topo_file, run_dir=stack_dir, base_port=port, jaeger=False, within=STACK_UP_S
    )
    progress(f"stack {group} up in {time.monotonic() - started:.0f} s: {len(cases)} cases")
    try:
        info = await from_management(stack)
        runner = Runner(
            _experiment(cases, seed, group, timing),
            info,
            processes=SupervisorControl(stack.supervisor),
            out_dir=stack_dir / "experiment",
            source=f"rca-bench {group}",
            handle_signals=False,
        )
        done: set[str] = set()

        def on_update(_: object) -> None:
            for entry in runner.journal.data["faults"]:
                name = str(entry.get("name", ""))
                if entry.get("status") == "rolled_back" and name not in done:
                    done.add(name)
                    if not name.endswith("--decoy"):
                        progress(f"  ran {name} on {', '.join(u['id'] for u in entry['units'])}")

        runner.on_update = on_update
        load_before = os.getloadavg()[0]
        result: RunResult = await runner.run()
        load_after = os.getloadavg()[0]
        progress(
            f"stack {group}: {result.verdict.value} {result.reason or ''} "
            f"(host load average {load_before:.1f} before, {load_after:.1f} after)"
        )
        if info.prometheus_url:
            # Process metrics, optional telemetry for the blind localiser: read them while
            # Prometheus still runs.
            try:
                journal = runner.journal.data
                series = await procmetrics.fetch(
                    info.prometheus_url,
                    float(journal["started_at"]),
                    float(journal.get("ended_at") or time.time()),
                )
                await asyncio.to_thread(procmetrics.save, stack_dir, series)
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                progress(f"stack {group}: no process metrics ({exc or type(exc).__name__})")
        return result.journal_path
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(down, stack.run_dir)


def _write_plan(folder: Path, plan: Mapping[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_text(json.dumps(plan, indent=2))
    topo_file = folder / "topology.yaml"
    if not topo_file.exists():
        topo_file.write_text(yaml.safe_dump(load_topology(None).to_data(), sort_keys=False))


async def run_bench(
    folder: Path,
    cases: Sequence[Case],
    *,
    seed: int,
    base_port: int | None = None,
    progress: Progress = print,
    timing: Timing = FULL,
) -> dict[str, Any]:
    """Run ``cases`` on fresh stacks under ``folder``, then localise blind and score."""
    plan = {
        "seed": seed,
        "cases": [c.name for c in cases],
        "fault_s": timing.fault_s,
        "gap_s": list(timing.gap_s),
    }
    await asyncio.to_thread(_write_plan, folder, plan)
    for group, members in _groups(cases):
        await _run_group(
            folder,
            group,
            members,
            seed=seed,
            base_port=base_port,
            progress=progress,
            timing=timing,
        )
    return await asyncio.to_thread(score_bench, folder, progress=progress)


# -- scoring ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    case: str
    fault_type: str
    truth: Truth
    start_s: float
    end_s: float
    applied_s: float
    window_given: str | None


def _segments(journal: Mapping[str, Any], by_name: Mapping[str, Case]) -> list[_Segment]:
    faults = [f for f in journal.get("faults", []) if f.get("applied_at") is not None]
    load_from = float(journal.get("started_at") or 0.0)
    for phase in journal.get("timeline", []):
        if phase.get("phase") == "method":
            load_from = float(phase["start"])
    given = {
        f["fault_id"]: f.get("located")
        for f in (journal.get("localization") or {}).get("faults", [])
    }
    out: list[_Segment] = []
    previous_end = load_from
    i = 0
    while i < len(faults):
        entry = faults[i]
        members = [entry]
        if i + 1 < len(faults) and faults[i + 1]["name"] == f"{entry['name']}--decoy":
            members.append(faults[i + 1])
        i += len(members)
        end = max(float(m.get("rolled_back_at") or m["applied_at"]) for m in members)
        case = by_name.get(str(entry["name"]))
        out.append(
            _Segment(
                case=str(entry["name"]),
                fault_type=case.type if case else str(entry["type"]),
                truth=truth_from_units(str(entry.get("target", "")), entry.get("units", [])),
                start_s=previous_end + SETTLE_S,
                end_s=end + TAIL_S,
                applied_s=float(entry["applied_at"]),
                window_given=given.get(entry["id"]),
            )
        )
        previous_end = end
    return out


def _slice(spans: Sequence[SpanRecord], start_s: float, end_s: float) -> list[SpanRecord]:
    lo, hi = int(start_s * 1e9), int(end_s * 1e9)
    return [s for s in spans if lo <= s.start_ns < hi]


def _clip(series: procmetrics.Series, start_s: float, end_s: float) -> procmetrics.Series:
    return {
        m: {i: [p for p in pts if start_s <= p[0] < end_s] for i, pts in per.items()}
        for m, per in series.items()
    }


def _why(seg: _Segment, blind: BlindResult, rank: int | None) -> str | None:
    """Why a case was not ranked first, in the localiser's terms."""
    if rank == 1:
        return None
    w = blind.window
    if w is None:
        return blind.reason
    where = (
        f"window {w.start_s - seg.applied_s:+.0f}..{w.end_s - seg.applied_s:+.0f} s of injection"
    )
    top = blind.suspects[0].name if blind.suspects else "nothing"
    if rank is None:
        return f"{where}; no significant signal at the truth there (ranked first: {top})"
    return f"{where}; ranked #{rank} below {top}"


def _case_result(seg: _Segment, blind: BlindResult) -> dict[str, Any]:
    rank = rank_of([s.match_key for s in blind.suspects], seg.truth)
    detect = None
    if blind.window is not None:
        # When the change was knowable: the end of the first anomalous bin after injection.
        detect = round(max(0.0, blind.window.first_alarm_s - seg.applied_s), 2)
    return {
        "case": seg.case,
        "why": _why(seg, blind, rank),
        "type": seg.fault_type,
        "truth": seg.truth.describe(),
        "segment": {"start": seg.start_s, "end": seg.end_s},
        "injected_at": seg.applied_s,
        "rank": rank,
        "detect_s": detect,
        "window_given": seg.window_given,
        "blind": blind.to_json(),
    }


def score_bench(folder: Path, *, progress: Progress = print) -> dict[str, Any]:
    """Localise every case of a finished bench folder blind, score, write ``rca-bench.json``."""
    by_name = {c.name: c for c in CATALOGUE}
    results: list[dict[str, Any]] = []
    journals = sorted(folder.glob("stack-*/experiment/journal.json"))
    if not journals:
        raise ValueError(f"{folder}: no stack-*/experiment/journal.json; is it a bench folder?")
    total = 0
    for path in journals:
        journal = json.loads(path.read_text("utf-8"))
        total += len(_segments(journal, by_name))
    n = 0
    for path in journals:
        journal = json.loads(path.read_text("utf-8"))
        spans = load_spans(path.parent.parent)
        metrics = procmetrics.load(path.parent.parent)
        for seg in _segments(journal, by_name):
            n += 1
            blind = localize_blind(
                _slice(spans, seg.start_s, seg.end_s),
                metrics=None if metrics is None else _clip(metrics, seg.start_s, seg.end_s),
            )
            row = _case_result(seg, blind)
            results.append(row)
            top = blind.suspects[0].name if blind.suspects else "undetermined"
            rank = row["rank"]
            progress(
                f"[{n}/{total}] {seg.case:32} truth {seg.truth.describe():28} "
                f"blind #1 {top:28} rank {rank if rank else 'miss'}"
                + (
                    f", detected after {row['detect_s']:.1f} s"
                    if row["detect_s"] is not None
                    else ""
                )
            )
    summary = summarize(results)
    out = {"folder": str(folder), "cases": results, "summary": summary}
    (folder / "rca-bench.json").write_text(json.dumps(out, indent=2))
    return out
