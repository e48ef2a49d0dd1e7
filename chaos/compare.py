"""``testbed chaos compare``: one experiment under several settings, each on a fresh stack.

A variant is ``name:key=value,key=value``; the keys change what the stack runs (the
experiment's ``requires`` is replaced where a variant says otherwise, so preflight and topology
agree):

- ``resilience.<component>=none|basic|full`` (the component's outbound-call profile);
- ``consistency=saga|naive`` (every service: the checkout saga runs in one mode);
- ``instances.<component>=N``;
- ``topology=FILE`` (another topology, e.g. the monolith baseline);
- ``env.<component>.<NAME>=VALUE`` (a setting of that component's processes, e.g.
  ``env.orders.TESTBED_RETRY_BUDGET=off``).

Each variant gets its own stack (brought up, the experiment run, torn down), so the variants
cannot contaminate each other. One report, ``compare.html``, puts them side by side: a table of
the verdict, error ratio, p50/p99, throughput, audit, detection and location per variant, the
timelines stacked, and a sentence naming the biggest difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from chaos.model import Experiment, Requires
from chaos.runner import RunResult
from management.topology import Topology
from mesh.errors import ConfigError, TestbedError

__all__ = [
    "Metrics",
    "Probe",
    "Variant",
    "difference_sentence",
    "metrics_of",
    "parse_variant",
    "probe_rows",
    "run_compare",
    "variant_experiment",
    "variant_topology",
]

STACK_READY_S = 240.0
"""How long a fresh stack may take to be ready (a loaded 2-core machine needs well over 90 s)."""
_MODES = {"resilience": ("none", "basic", "full"), "consistency": ("saga", "naive")}
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class Variant:
    """One setting of the comparison: a name and what it changes."""

    name: str
    resilience: dict[str, str] = field(default_factory=dict)
    consistency: str | None = None
    instances: dict[str, int] = field(default_factory=dict)
    topology: Path | None = None
    env: dict[str, dict[str, str]] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"resilience.{c}={m}" for c, m in self.resilience.items()]
        parts += [f"consistency={self.consistency}"] if self.consistency else []
        parts += [f"instances.{c}={n}" for c, n in self.instances.items()]
        parts += [f"topology={self.topology}"] if self.topology else []
        parts += [f"env.{c}.{k}={v}" for c, kv in self.env.items() for k, v in kv.items()]
        return ", ".join(parts) or "as the experiment requires"


def parse_variant(text: str) -> Variant:
    """``none:resilience.gateway=none`` -> a ``Variant``; a bad one names the fix."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(
            f"variant {text!r}: write NAME:KEY=VALUE[,KEY=VALUE], e.g. none:resilience.gateway=none"
        )
    resilience: dict[str, str] = {}
    instances: dict[str, int] = {}
    consistency: str | None = None
    topology: Path | None = None
    env: dict[str, dict[str, str]] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        head, dot, comp = key.partition(".")
        if not eq or not value:
            raise ConfigError(f"variant {name!r}: {part!r} is not KEY=VALUE")
        if head == "resilience" and dot and comp:
            if value not in _MODES["resilience"]:
                raise ConfigError(
                    f"variant {name!r}: resilience {value!r}; use none, basic or full"
                )
            resilience[comp] = value
        elif key == "consistency":
            if value not in _MODES["consistency"]:
                raise ConfigError(f"variant {name!r}: consistency {value!r}; use saga or naive")
            consistency = value
        elif head == "instances" and dot and comp:
            if not value.isdigit() or not 1 <= int(value) <= 10:
                raise ConfigError(f"variant {name!r}: instances {value!r}; use a count 1-10")
            instances[comp] = int(value)
        elif head == "env" and dot and comp:
            component, dot2, var = comp.partition(".")
            if not dot2 or not component or not _ENV_NAME.fullmatch(var):
                raise ConfigError(
                    f"variant {name!r}: {key!r}; write env.<component>.<NAME>=VALUE"
                    " (NAME in capitals, e.g. env.orders.TESTBED_RETRY_BUDGET=off)"
                )
            env.setdefault(component, {})[var] = value
        elif key == "topology":
            topology = Path(value)
            if not topology.is_file():
                raise ConfigError(f"variant {name!r}: no topology file {value!r}")
        else:
            raise ConfigError(
                f"variant {name!r}: unknown setting {key!r}; use resilience.<component>, "
                "consistency, instances.<component>, topology or env.<component>.<NAME>"
            )
    return Variant(name, resilience, consistency, instances, topology, env)


def variant_experiment(exp: Experiment, variant: Variant) -> Experiment:
    """``exp`` with its ``requires`` changed as the variant says (the variant wins)."""
    req = exp.requires
    consistency: dict[str, str] = dict(req.consistency)
    if variant.consistency is not None:
        consistency = dict.fromkeys(consistency or ("orders",), variant.consistency)
    requires = Requires.model_validate(
        {
            "resilience": {**req.resilience, **variant.resilience},
            "consistency": consistency,
            "instances": {**req.instances, **variant.instances},
        }
    )
    return exp.model_copy(update={"requires": requires})


def variant_topology(base: Topology, exp: Experiment, variant: Variant) -> Topology:
    """The stack a variant runs: ``base`` fitted to ``exp``, with the variant's exact counts.

    (``requires`` only raises instance counts; a variant may also lower them.)
    """
    from chaos.demo import topology_for

    topo = topology_for(base, exp)
    for comp, count in variant.instances.items():
        topo = topo.with_instances(comp, count)
    for comp, settings in variant.env.items():
        if comp not in topo.components:
            raise ConfigError(
                f"variant {variant.name!r}: no component {comp!r} in the topology; "
                f"known: {', '.join(topo.components)}"
            )
        topo = topo.with_env(comp, settings)
    return topo


@dataclass(frozen=True)
class Metrics:
    """What one variant's users saw during the method, and its verdict."""

    variant: str
    verdict: str
    as_expected: bool
    requests: int | None
    error_ratio: float | None
    p50_ms: float | None
    p99_ms: float | None
    rps: float | None
    audit: str
    detected: str = "-"
    """When an alert saw the fault: ``1.8 s`` after it was applied, ``no``; ``-``: no fault."""
    located: str = "-"
    """Whether the traces located the fault (``yes (#1)``, ``no (#3)``, ``undetermined``)."""
    probes: dict[str, Probe] = field(default_factory=dict)
    """The experiment's own measures at the end (steady state after, verify), by name."""


@dataclass(frozen=True)
class Probe:
    """A probe's last value in a variant's run, and whether it met its tolerance."""

    value: float | None
    ok: bool | None
    tolerance: str

    def describe(self) -> str:
        if self.value is None:
            return "-"
        mark = "" if self.ok is None else (" ok" if self.ok else f" (wanted {self.tolerance})")
        return f"{self.value:,.4g}{mark}"


def metrics_of(variant: str, journal: dict[str, Any], result: RunResult | None) -> Metrics:
    """The method's numbers from a journal (percentiles from Locust's history over the method)."""
    load = journal.get("load") or {}
    method = load.get("method") or {}
    phases = {p.get("phase"): p for p in journal.get("timeline") or []}
    window = phases.get("method") or {}
    seconds = None
    if window.get("start") is not None and window.get("end") is not None:
        seconds = float(window["end"]) - float(window["start"])
    requests = method.get("requests")
    rps = requests / seconds if requests is not None and seconds else None
    return Metrics(
        variant=variant,
        verdict=str(journal.get("verdict") or (result.verdict.value if result else "error")),
        as_expected=bool(journal.get("as_expected")),
        requests=requests,
        error_ratio=method.get("error_ratio"),
        p50_ms=method.get("p50_ms"),
        p99_ms=method.get("p99_ms"),
        rps=rps,
        audit=(result.audit if result is not None and result.audit else "-"),
        detected=(result.detected if result is not None and result.detected else "-"),
        located=(result.located if result is not None and result.located else "-"),
        probes=_final_probes(journal),
    )


def _final_probes(journal: dict[str, Any]) -> dict[str, Probe]:
    out: dict[str, Probe] = {}
    for entry in journal.get("probes") or []:
        if entry.get("phase") not in ("steady_state:after", "verify:after"):
            continue
        value = entry.get("value")
        ok = entry.get("ok")
        out[str(entry.get("name"))] = Probe(
            float(value) if isinstance(value, int | float) else None,
            ok if isinstance(ok, bool) else None,
            str(entry.get("tolerance") or ""),
        )
    return out


def _ratio_words(a: float, b: float) -> str:
    if a > 0 and b > 0:
        big, small = max(a, b), min(a, b)
        return f"{big / small:.1f}x"
    return "from none"


def difference_sentence(rows: Sequence[Metrics]) -> str:
    """One sentence naming the largest difference between the variants (against the first)."""
    if len(rows) < 2:
        return "Only one variant ran: nothing to compare."
    base = rows[0]
    best: tuple[float, str] | None = None
    for other in rows[1:]:
        candidates: list[tuple[float, str]] = []
        for label, unit, a, b in (
            ("p99 during the method", "ms", base.p99_ms, other.p99_ms),
            ("p50 during the method", "ms", base.p50_ms, other.p50_ms),
            ("throughput", "req/s", base.rps, other.rps),
        ):
            if a is None or b is None or max(a, b) <= 0:
                continue
            score = max(a, b) / max(min(a, b), 1e-9)
            candidates.append(
                (
                    score,
                    f"{label} is {a:,.0f} {unit} with {base.variant} against {b:,.0f} {unit} "
                    f"with {other.variant} ({_ratio_words(a, b)})",
                )
            )
        ea, eb = base.error_ratio, other.error_ratio
        if ea is not None and eb is not None and abs(ea - eb) >= 0.005:
            candidates.append(
                (
                    1.0 + 100 * abs(ea - eb),
                    f"{ea:.1%} of requests failed with {base.variant} against {eb:.1%} with "
                    f"{other.variant}",
                )
            )
        for probe, ours in base.probes.items():
            theirs = other.probes.get(probe)
            if theirs is None or ours.ok is None or theirs.ok is None or ours.ok == theirs.ok:
                continue
            if ours.value is None or theirs.value is None:
                continue
            candidates.append(
                (
                    40.0,
                    f"{probe} is {ours.value:,.4g} with {base.variant} against "
                    f"{theirs.value:,.4g} with {other.variant} (wanted {ours.tolerance})",
                )
            )
        if base.audit != other.audit:
            candidates.append(
                (
                    50.0,
                    f"the audit reads {base.audit} with {base.variant}, "
                    f"{other.audit} with {other.variant}",
                )
            )
        for cand in candidates:
            if best is None or cand[0] > best[0]:
                best = cand
    if best is None or best[0] < 1.2:
        return "The variants behaved alike: no measure differs by more than 20%."
    text = best[1]
    return text[0].upper() + text[1:] + "."


def probe_rows(rows: Sequence[Metrics]) -> list[tuple[str, list[str]]]:
    """Each probe of any variant, with its value per variant (``-``: not measured there)."""
    names: list[str] = []
    for m in rows:
        names += [n for n in m.probes if n not in names]
    return [(n, [m.probes[n].describe() if n in m.probes else "-" for m in rows]) for n in names]


def _probe_table(rows: Sequence[Metrics]) -> Table:
    table = Table("probe", *(m.variant for m in rows))
    for name, cells in probe_rows(rows):
        table.add_row(name, *cells)
    return table


def _summary_table(rows: Sequence[Metrics]) -> Table:
    table = Table(
        "variant",
        "verdict",
        "requests",
        "error ratio",
        "p50",
        "p99",
        "req/s",
        "audit",
        "detected",
        "located",
    )
    for m in rows:
        table.add_row(
            m.variant,
            m.verdict + ("" if m.as_expected else " (not as expected)"),
            "-" if m.requests is None else str(m.requests),
            "-" if m.error_ratio is None else f"{m.error_ratio:.2%}",
            "-" if m.p50_ms is None else f"{m.p50_ms:.0f} ms",
            "-" if m.p99_ms is None else f"{m.p99_ms:.0f} ms",
            "-" if m.rps is None else f"{m.rps:.1f}",
            m.audit,
            m.detected,
            m.located,
        )
    return table


async def run_compare(
    name: str,
    exp: Experiment,
    variants: Sequence[Variant],
    run_dir: Path,
    console: Console,
    *,
    base_port: int | None = None,
) -> tuple[list[Metrics], Path]:
    """Run ``exp`` once per variant, each on a fresh stack; write ``compare.html``."""
    import json

    from chaos.cli import print_result
    from chaos.demo import fit_load
    from chaos.execute import run_on_stack
    from chaos.pages import write_compare_report
    from management.stack import down, up
    from management.topology import load_topology

    rows: list[Metrics] = []
    journals: list[tuple[str, Path | None]] = []
    for index, variant in enumerate(variants, start=1):
        vexp = fit_load(variant_experiment(exp, variant))
        topo = variant_topology(load_topology(variant.topology), vexp, variant)
        folder = run_dir / f"{index}-{variant.name}"
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        topo_file = folder / "topology.yaml"
        await asyncio.to_thread(
            topo_file.write_text, yaml.safe_dump(topo.to_data(), sort_keys=False)
        )
        console.rule(f"variant {variant.name}: {variant.describe()}")
        started = time.monotonic()
        result: RunResult | None = None
        try:
            stack = await up(
                topology=topo_file,
                run_dir=folder / "stack",
                base_port=base_port,
                jaeger=False,
                progress=lambda m: console.print(f"  {m}", style="dim"),
                within=STACK_READY_S,
            )
        except (ConfigError, TestbedError, OSError) as exc:
            console.print(f"  variant {variant.name}: the stack did not start: {exc}", style="red")
            rows.append(metrics_of(variant.name, {"verdict": "error"}, None))
            journals.append((variant.name, None))
            continue
        try:
            console.print(f"  stack up in {time.monotonic() - started:.1f} s")
            result = await run_on_stack(
                vexp, source=name, run_dir=stack.run_dir, console=console, live=False
            )
            print_result(console, result)
        finally:
            console.print("  stopping the stack", style="dim")
            with contextlib.suppress(Exception):
                await asyncio.to_thread(down, stack.run_dir)
        journal: dict[str, Any] = {}
        if result is not None:
            with contextlib.suppress(OSError, ValueError):
                journal = json.loads(result.journal_path.read_text("utf-8"))
        rows.append(metrics_of(variant.name, journal, result))
        journals.append((variant.name, result.journal_path if result is not None else None))
    sentence = difference_sentence(rows)
    console.width = max(console.width, 120)  # the table is the result: never squeezed
    console.print(_summary_table(rows))
    if any(m.probes for m in rows):
        console.print(_probe_table(rows))
    console.print(sentence)
    page = await asyncio.to_thread(
        write_compare_report,
        run_dir,
        title=exp.title,
        source=name,
        variants=[(v.name, v.describe()) for v in variants],
        rows=[m.__dict__ for m in rows],
        journals=journals,
        sentence=sentence,
        probes=probe_rows(rows),
    )
    return rows, page
