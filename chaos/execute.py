"""Run experiments and rollbacks against the stack the management plane runs.

The glue between the engine (which only knows ``StackInfo`` and ``ProcessControl``) and
``management.stack``: open the current stack, build the engine's view of it, control processes
through its supervisord, put the journal under ``<run>/chaos/<time>-<title>/``.
"""

from __future__ import annotations

import contextlib
import time
from importlib import resources
from pathlib import Path

from rich.console import Console

from chaos.faults.processes import SupervisorControl
from chaos.live import LiveView
from chaos.loader import load_experiment, parse_experiment
from chaos.lock import StackLock
from chaos.model import Experiment
from chaos.rollback import rollback_leftovers
from chaos.runner import Runner, RunResult, slug
from chaos.stack import from_management
from management.stack import open_stack
from mesh.errors import ConfigError

__all__ = ["find_experiment", "rollback_stack", "run_on_stack", "shipped_experiments"]


def shipped_experiments() -> dict[str, tuple[Path, Experiment]]:
    """The experiments that ship with the project, by name (file name without ``.yaml``)."""
    folder = resources.files("chaos").joinpath("experiments")
    out: dict[str, tuple[Path, Experiment]] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            path = Path(str(entry))
            out[entry.name.removesuffix(".yaml")] = (
                path,
                parse_experiment(entry.read_text("utf-8"), str(path)),
            )
    return out


def find_experiment(name_or_path: str) -> tuple[Path, Experiment]:
    """A file path, or the name of a shipped experiment (``orders-kill``)."""
    path = Path(name_or_path)
    if path.exists() or name_or_path.endswith((".yaml", ".yml")):
        return path, load_experiment(path)
    shipped = shipped_experiments()
    if name_or_path in shipped:
        return shipped[name_or_path]
    known = ", ".join(shipped)
    raise ConfigError(
        f"no experiment file {name_or_path!r} and no shipped one by that name ({known})"
    )


async def run_on_stack(
    experiment: Experiment,
    *,
    source: str | None,
    run_dir: Path | None = None,
    console: Console | None = None,
    live: bool = True,
    out_dir: Path | None = None,
) -> RunResult:
    """Run ``experiment`` against the stack that is up (``run_dir``: default, the current)."""
    stack = open_stack(run_dir)
    info = await from_management(stack)
    out = out_dir or (
        info.run_dir / "chaos" / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(experiment.title)}"
    )
    view = LiveView(console or Console()) if live else None
    with StackLock(info.run_dir, experiment.title):
        runner = Runner(
            experiment,
            info,
            processes=SupervisorControl(stack.supervisor),
            out_dir=out,
            source=source,
            on_update=view.update if view is not None else None,
            manage=stack,
        )
        with view if view is not None else contextlib.nullcontext():
            return await runner.run()


async def rollback_stack(run_dir: Path | None = None) -> list[str]:
    stack = open_stack(run_dir)
    info = await from_management(stack)
    with StackLock(info.run_dir, "testbed chaos rollback"):
        done = await rollback_leftovers(info, SupervisorControl(stack.supervisor))
        # A canary left by a killed runner (or `testbed deploy --canary`): drained and removed.
        for component in list(stack.canaries):
            seconds = await stack.remove_canary(component)
            done.append(f"removed the canary of {component} ({seconds:.1f} s)")
        return done
