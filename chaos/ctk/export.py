"""A testbed experiment written as a Chaos Toolkit experiment (``testbed chaos export``).

The mapping, part by part:

* ``steady_state`` and ``verify`` probes -> the ``steady-state-hypothesis``'s probes, each a
  ``chaos.ctk.probes`` function of its kind with the testbed tolerance as a probe tolerance
  (``within``); ``verify`` probes are marked ``when: ["after"]`` (and so is a locust probe over
  the method), as ``testbed chaos run`` checks them after the method only;
* ``method`` -> actions: each ``fault`` a ``chaos.ctk.actions.fault`` with the experiment's
  ``seed`` and the fault's name (so the blast radius picks the same instances), each ``pause``
  a ``pauses`` entry, a ``parallel`` or ``sequence`` group one ``chaos.ctk.actions.steps``;
* ``load``, ``requires``, ``safeguards``, ``settle`` -> the ``chaos.ctk.control`` control, which
  carries the whole testbed experiment (``testbed``);
* rollbacks -> ``chaos.ctk.actions.rollback`` (every fault this run still has in effect).

Configuration: ``testbed_run_dir`` from the environment (``TESTBED_RUN_DIR``; empty: the stack
``testbed up`` started last) and ``testbed_name`` (the run's folder ``<run>/chaos/ctk-<name>``).
"""

from __future__ import annotations

from typing import Any

from chaos.loader import iter_faults
from chaos.model import (
    AuditProbe,
    EjectionProbe,
    Experiment,
    FaultStep,
    HttpProbe,
    LocustProbe,
    PauseStep,
    ProbeSpec,
    PrometheusProbe,
    Step,
)
from chaos.probes import probe_label
from chaos.runner import fault_label, slug

__all__ = ["CONTROL_MODULE", "export_experiment"]

ACTIONS = "chaos.ctk.actions"
PROBES = "chaos.ctk.probes"
CONTROL_MODULE = "chaos.ctk.control"


def _provider(module: str, func: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "python", "module": module, "func": func, "arguments": arguments}


def _probe_call(probe: ProbeSpec) -> tuple[str, dict[str, Any]]:
    if isinstance(probe, PrometheusProbe):
        args: dict[str, Any] = {"query": " ".join(probe.query.split()), "reduce": probe.reduce}
        if probe.empty is not None:
            args["empty"] = probe.empty
        return "prometheus", args
    if isinstance(probe, LocustProbe):
        return "locust", {
            "metric": probe.metric,
            "request": probe.request,
            "over": probe.over,
            "window": probe.window,
        }
    if isinstance(probe, HttpProbe):
        args = {"url": probe.url, "method": probe.method, "timeout": probe.timeout}
        if probe.headers:
            args["headers"] = dict(probe.headers)
        if probe.json_path is not None:
            args["json_path"] = probe.json_path
        return "http", args
    if isinstance(probe, EjectionProbe):
        return "ejection", {"fault": probe.fault}
    assert isinstance(probe, AuditProbe)
    return "audit", {}


def _probe(probe: ProbeSpec, name: str, *, verify: bool) -> dict[str, Any]:
    func, args = _probe_call(probe)
    when = list(probe.when)
    if verify or (isinstance(probe, LocustProbe) and probe.over == "method"):
        when = [w for w in when if w == "after"] or ["after"]
    tolerance = probe.tolerance.model_dump(mode="json", exclude_none=True)
    if "range" in tolerance:
        tolerance["range"] = list(tolerance["range"])
    return {
        "type": "probe",
        "name": name,
        "provider": _provider(PROBES, func, args),
        "tolerance": {
            "type": "probe",
            "name": f"{name}-within-tolerance",
            "provider": _provider(
                PROBES, "within", {"tolerance": tolerance, "name": name, "when": when}
            ),
        },
    }


def _named(exp: Experiment) -> dict[int, tuple[int, str]]:
    """Each fault step's number and name as ``testbed chaos run`` gives them."""
    return {
        id(step): (i + 1, fault_label(step.fault, i + 1))
        for i, (_, step) in enumerate(iter_faults(exp.method))
    }


def _step_json(step: Step, names: dict[int, tuple[int, str]]) -> Any:
    """A method step as testbed JSON, with every fault's name filled in."""
    if isinstance(step, FaultStep):
        spec = step.fault.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        spec["type"] = step.fault.type
        spec["target"] = step.fault.target.model_dump(mode="json", exclude_none=True)
        spec["name"] = names[id(step)][1]
        return {"fault": spec}
    data = step.model_dump(mode="json", by_alias=True)
    key = next(iter(data))
    if key not in ("parallel", "sequence"):
        return data  # pause, scale, deploy, flood: the step as the testbed reads it
    subs = getattr(step, key)
    return {key: [_step_json(s, names) for s in subs]}


def _method(exp: Experiment) -> list[dict[str, Any]]:
    names = _named(exp)
    activities: list[dict[str, Any]] = []
    pending_pause = 0.0
    for step in exp.method:
        if isinstance(step, PauseStep):
            pending_pause += step.pause
            continue
        if isinstance(step, FaultStep):
            index, name = names[id(step)]
            activity: dict[str, Any] = {
                "type": "action",
                "name": name,
                "provider": _provider(
                    ACTIONS,
                    "fault",
                    {"spec": _step_json(step, names)["fault"], "seed": exp.seed, "index": index},
                ),
            }
        else:
            first = min(
                (names[id(s)][0] for _, s in iter_faults([step])),
                default=1,
            )
            kind = next(iter(type(step).model_fields))  # parallel, sequence, scale, ...
            grouped = kind in ("parallel", "sequence")
            label = f"{kind}-from-fault-{first}" if grouped else f"{kind}-{len(activities) + 1}"
            activity = {
                "type": "action",
                "name": label,
                "provider": _provider(
                    ACTIONS,
                    "steps",
                    {"steps": [_step_json(step, names)], "seed": exp.seed, "first_index": first},
                ),
            }
        if pending_pause:
            activity["pauses"] = {"before": pending_pause}
            pending_pause = 0.0
        activities.append(activity)
    if pending_pause:
        if activities:
            activities[-1].setdefault("pauses", {})["after"] = pending_pause
        else:
            activities.append(
                {
                    "type": "action",
                    "name": "pause",
                    "provider": _provider(
                        ACTIONS, "steps", {"steps": [{"pause": pending_pause}], "seed": exp.seed}
                    ),
                }
            )
    return activities


def export_experiment(exp: Experiment, *, name: str | None = None) -> dict[str, Any]:
    """``exp`` as a Chaos Toolkit experiment (a JSON-ready dict)."""
    testbed = exp.model_dump(mode="json", by_alias=True)
    steady = [
        _probe(p, probe_label(p, i, "steady_state"), verify=False)
        for i, p in enumerate(exp.steady_state)
    ]
    verify = [_probe(p, probe_label(p, i, "verify"), verify=True) for i, p in enumerate(exp.verify)]
    run_name = slug(name or exp.title)
    description = exp.hypothesis.strip()
    if exp.description.strip():
        description += "\n\n" + exp.description.strip()
    return {
        "version": "1.0.0",
        "title": exp.title,
        "description": description,
        "tags": ["testbed", f"expect-{exp.expect}"],
        "configuration": {
            "testbed_run_dir": {"type": "env", "key": "TESTBED_RUN_DIR", "default": ""},
            "testbed_name": run_name,
        },
        "controls": [
            {
                "name": "testbed",
                "provider": {
                    "type": "python",
                    "module": CONTROL_MODULE,
                    "arguments": {"testbed": testbed, "verify": [p["name"] for p in verify]},
                },
            }
        ],
        "steady-state-hypothesis": {"title": exp.hypothesis.strip(), "probes": steady + verify},
        "method": _method(exp),
        "rollbacks": [
            {
                "type": "action",
                "name": "roll-back-every-fault",
                "provider": _provider(ACTIONS, "rollback", {}),
            }
        ],
    }
