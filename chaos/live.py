"""The live view while an experiment runs (rich ``Live``): phase, faults, error ratio, p99."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from chaos.runner import LiveState

__all__ = ["LiveView", "render"]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def render(state: LiveState) -> Panel:
    head = Table.grid(padding=(0, 2))
    head.add_row("phase", Text(state.phase, style="bold cyan"))
    head.add_row("elapsed", f"{time.monotonic() - state.started:.0f} s")
    err_style = "red" if (state.error_ratio or 0) > 0.01 else "green"
    head.add_row("error ratio (5 s)", Text(_pct(state.error_ratio), style=err_style))
    head.add_row("p99 (10 s)", _ms(state.p99_ms))
    head.add_row("throughput", "-" if state.rps is None else f"{state.rps:.1f} req/s")
    head.add_row("users", str(state.users))
    faults = Table("active fault", box=None, show_header=True, header_style="bold")
    for desc in state.active.values():
        faults.add_row(Text(desc, style="yellow"))
    if not state.active:
        faults.add_row(Text("none", style="dim"))
    parts: list[Table | Text] = [head, faults]
    if state.safeguards:
        guards = Table("safeguard", "value", box=None, header_style="bold")
        for name, value in state.safeguards.items():
            guards.add_row(name, Text(value, style="red" if "CROSSED" in value else "green"))
        parts.append(guards)
    if state.last_event:
        parts.append(Text(state.last_event, style="dim"))
    return Panel(Group(*parts), title=state.title, border_style="blue")


class LiveView:
    """Context manager: ``with LiveView(console) as view: runner(on_update=view.update)``."""

    def __init__(self, console: Console) -> None:
        self._live = Live(console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def update(self, state: LiveState) -> None:
        self._live.update(render(state))
