"""Read an experiment file and validate it, naming the file, line and fix of every problem.

PyYAML's ``safe_load`` forgets where values came from, so the file is composed into nodes first
(each carries its ``start_mark``); a map from each value's path to its line lets a pydantic error
(``method.1.fault.latency_ms``) be reported as ``exp.yaml:14:9: method[1].fault.latency_ms: ...``.
Checks that need the whole file (a locust probe without load, a process fault on a link) run
after the schema and are reported the same way. Nothing here touches the running stack.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from chaos.model import (
    EjectionProbe,
    Experiment,
    FaultStep,
    LocustProbe,
    NetworkFault,
    ParallelStep,
    SequenceStep,
    Step,
)
from chaos.probes import probe_label
from management.yamlfile import Marked, PathT, YamlFileError, load_marked
from mesh.errors import ConfigError

__all__ = ["ExperimentError", "iter_faults", "load_experiment", "parse_experiment"]


class ExperimentError(ConfigError):
    """The experiment file is invalid; ``problems`` holds one ``file:line:col: where: what``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid experiment:\n  " + "\n  ".join(problems))


def _tags() -> dict[str, type[BaseModel]]:
    from chaos import model as m

    tags: dict[str, type[BaseModel]] = {
        "pause": m.PauseStep,
        "fault": m.FaultStep,
        "parallel": m.ParallelStep,
        "sequence": m.SequenceStep,
        "scale": m.ScaleStep,
        "deploy": m.DeployStep,
        "flood": m.FloodStep,
    }
    for cls in (
        m.NetworkFault,
        m.ProcessFault,
        m.ServiceFault,
        m.PrometheusProbe,
        m.HttpProbe,
        m.LocustProbe,
        m.AuditProbe,
        m.EjectionProbe,
    ):
        for tag in get_args(cls.model_fields["type"].annotation):
            tags[tag] = cls
    return tags


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The one model class inside ``annotation`` (``X | None``, ``list[X]``), else ``None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    found = {m for a in get_args(annotation) if (m := _nested_model(a)) is not None}
    return found.pop() if len(found) == 1 else None


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed where pydantic's error location ``loc`` points (for 'did you mean')."""
    tags = _tags()
    model: type[BaseModel] | None = Experiment
    for p in loc:
        if isinstance(p, int):
            continue
        fields = {f.alias or n: f for n, f in model.model_fields.items()} if model else {}
        if p in fields:
            model = _nested_model(fields[p].annotation)
        elif p in tags:
            model = tags[p]
        else:
            model = None
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _pydantic_problems(exc: ValidationError, rep: Marked, data: Any) -> Iterator[str]:
    seen: set[str] = set()
    for err in exc.errors(include_url=False):
        # Drop the union tags pydantic inserts into the location ('network.latency', 'fault').
        raw = err["loc"]
        path: list[str | int] = []
        node: Any = data
        for p in raw:
            in_dict = isinstance(node, dict) and p in node
            if in_dict or (isinstance(node, list) and isinstance(p, int) and p < len(node)):
                path.append(p)
                node = node[p]
        loc = tuple(path)
        kind = err["type"]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            bad = str(raw[-1])
            known = _known_fields(tuple(raw[:-1]))
            hint = difflib.get_close_matches(bad, known, n=1)
            fix = f"; did you mean {hint[0]!r}?" if hint else ""
            if not hint and known:
                fix = f"; allowed here: {', '.join(sorted(known))}"
            text = rep.problem(loc, f"unknown field {bad!r}{fix}", key=True)
        elif kind == "missing":
            text = rep.problem(loc, f"field {raw[-1]!r} is required")
        elif kind == "union_tag_invalid":
            ctx = err.get("ctx") or {}
            tag = ctx.get("tag", "?")
            expected = str(ctx.get("expected_tags", ""))
            options = [t.strip().strip("'") for t in expected.split(",")]
            hint = difflib.get_close_matches(str(tag), options, n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"use one of {expected}"
            text = rep.problem((*loc, "type"), f"unknown type {tag!r}; {fix}")
        elif kind == "union_tag_not_found":
            text = rep.problem(loc, "missing 'type' (which kind of probe or fault this is)")
        else:
            text = rep.problem(loc, msg)
        if text not in seen:
            seen.add(text)
            yield text


def iter_faults(steps: list[Step], path: PathT = ("method",)) -> Iterator[tuple[PathT, FaultStep]]:
    """Every fault step of a method, depth first, with its path in the file."""
    for i, step in enumerate(steps):
        if isinstance(step, FaultStep):
            yield (*path, i, "fault"), step
        elif isinstance(step, ParallelStep):
            yield from iter_faults(step.parallel, (*path, i, "parallel"))
        elif isinstance(step, SequenceStep):
            yield from iter_faults(step.sequence, (*path, i, "sequence"))


def _semantic_problems(exp: Experiment) -> Iterator[tuple[PathT, str]]:
    probes: list[tuple[PathT, Any]] = [
        (("steady_state", i), p) for i, p in enumerate(exp.steady_state)
    ]
    probes += [(("verify", i), p) for i, p in enumerate(exp.verify)]
    probes += [(("safeguards", i, "probe"), s.probe) for i, s in enumerate(exp.safeguards)]
    names: dict[str, PathT] = {}
    for path, probe in probes:
        if isinstance(probe, LocustProbe) and exp.load is None:
            yield path, "a locust probe needs the experiment's 'load'; add e.g. 'load: {users: 10}'"
        if probe.name:
            if probe.name in names and path[0] != "safeguards":
                yield (*path, "name"), f"probe name {probe.name!r} is used twice"
            names[probe.name] = path
    checked = {
        probe_label(p, i, section)
        for section, group in (("steady_state", exp.steady_state), ("verify", exp.verify))
        for i, p in enumerate(group)
    }
    for i, name in enumerate(exp.deviation):
        if name not in checked:
            known = ", ".join(sorted(checked)) or "none: add steady_state or verify probes"
            yield ("deviation", i), f"{name!r} is not a probe of this experiment; probes: {known}"
    for i, guard in enumerate(exp.safeguards):
        probe = guard.probe
        if isinstance(probe, LocustProbe) and probe.over != "window":
            yield (
                ("safeguards", i, "probe", "over"),
                "a safeguard watches the live load; use 'over: window'",
            )
    fault_names = [
        step.fault.name or f"{step.fault.type.split('.')[1]}-{i + 1}"
        for i, (_, step) in enumerate(iter_faults(exp.method))
    ]
    for path, probe in probes:
        if isinstance(probe, EjectionProbe) and probe.fault not in fault_names:
            known = ", ".join(fault_names) or "none: add a fault step with a name"
            yield (*path, "fault"), f"{probe.fault!r} is not a fault of the method; faults: {known}"
    for path, step in iter_faults(exp.method):
        fault = step.fault
        if fault.target.link is not None and not isinstance(fault, NetworkFault):
            yield (
                (*path, "target"),
                f"{fault.type} acts on processes; a link can only take network.* faults",
            )


def parse_experiment(text: str, source: str = "<experiment>") -> Experiment:
    """Parse and validate experiment YAML; raise ``ExperimentError`` naming line and fix."""
    try:
        rep = load_marked(text, source, start_hint="start with 'title:'")
    except YamlFileError as exc:
        raise ExperimentError(exc.problems) from None
    data = rep.data
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as exc:
        raise ExperimentError(list(_pydantic_problems(exc, rep, data))) from None
    problems = [rep.problem(p, m) for p, m in _semantic_problems(exp)]
    if problems:
        raise ExperimentError(problems)
    return exp


def load_experiment(path: Path | str) -> Experiment:
    """Read and validate an experiment file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read experiment file {p}: {exc.strerror}") from None
    return parse_experiment(text, str(p))
