"""The soak's ``report.html``: verdict, figures, faults by component, convergence, the checks.

The page is a Jinja template (``chaos/templates/soak.html``, autoescaped, on the experiment
report's ``base.html`` and stylesheet) fed plain data read from the journal. The one chart
(orders still pending and instances not ready, per poll after the last fault) is a small inline
SVG drawn here, as the experiment report draws its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jinja2

from chaos.report import TEMPLATES
from observability.logs import get_logger

__all__ = ["render_soak_report", "try_write_soak_report", "write_soak_report"]

REPORT_NAME = "report.html"


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def convergence_svg(samples: list[dict[str, Any]], since: float | None, bound: float) -> str:
    """Pending orders (bars) and not-ready instances (dots) per poll, with the bound marked."""
    if not samples or since is None:
        return ""
    w, h, pad = 700.0, 120.0, 24.0
    span = max(bound * 1.2, max(float(s["at"]) - since for s in samples) + 1.0)
    top = max([int(s.get("pending_orders") or 0) for s in samples] + [1])

    def x(t: float) -> float:
        return pad + (t - since) / span * (w - 2 * pad)

    parts = [
        f'<svg class="chart" viewBox="0 0 {w:.0f} {h + 30:.0f}" role="img"'
        ' aria-label="convergence after the last fault">',
        f'<line x1="{pad}" y1="{h}" x2="{w - pad}" y2="{h}" stroke="#9aa1ab"/>',
    ]
    bx = x(since + bound)
    parts.append(
        f'<line x1="{bx:.1f}" y1="8" x2="{bx:.1f}" y2="{h}" stroke="#c62f3a"'
        ' stroke-dasharray="4 3"/>'
        f'<text x="{bx + 4:.1f}" y="18" font-size="11" fill="#c62f3a">bound {bound:g} s</text>'
    )
    for s in samples:
        t = float(s["at"])
        pending = s.get("pending_orders")
        px = x(t)
        if pending is None:
            parts.append(f'<text x="{px:.1f}" y="{h - 4}" font-size="10" fill="#c62f3a">?</text>')
        elif pending:
            bh = pending / top * (h - 20)
            parts.append(
                f'<rect x="{px - 2:.1f}" y="{h - bh:.1f}" width="4" height="{bh:.1f}"'
                ' fill="#8aa6d6"/>'
            )
        if s.get("not_ready"):
            parts.append(f'<circle cx="{px:.1f}" cy="{h + 8}" r="3" fill="#c47f0a"/>')
    for sec in range(0, int(span) + 1, 10):
        tx = x(since + sec)
        parts.append(
            f'<text x="{tx:.1f}" y="{h + 24}" font-size="10" fill="#6b7280"'
            f' text-anchor="middle">{sec}s</text>'
        )
    parts.append(
        f'<text x="{pad}" y="12" font-size="11" fill="#6b7280">pending orders (max {top});'
        " dots: an instance not ready</text></svg>"
    )
    return "".join(parts)


def _clock(ts: object) -> str:
    if not isinstance(ts, int | float) or not ts:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(float(ts)))


def render_soak_report(data: dict[str, Any]) -> str:
    soak: dict[str, Any] = data.get("soak") or {}
    exp: dict[str, Any] = data.get("experiment") or {}
    timeline = data.get("timeline") or []
    converge = next((p for p in timeline if p.get("phase") == "converge"), None)
    since = float(converge["start"]) if converge else None
    faults = [
        {
            "id": f.get("id"),
            "kind": (f.get("soak") or {}).get("kind", f.get("type")),
            "type": f.get("type"),
            "unit": ", ".join(u.get("id", "?") for u in f.get("units") or []),
            "applied": _clock(f.get("applied_at")),
            "rolled_back": _clock(f.get("rolled_back_at")),
            "status": f.get("status"),
            "error": f.get("error"),
            "recovered": (f.get("details") or {}).get("recovered_after_s"),
        }
        for f in data.get("faults") or []
    ]
    kinds = sorted({k for c in (soak.get("faults_by_component") or {}).values() for k in c})
    template = _environment().get_template("soak.html")
    return template.render(
        title=exp.get("title", "Nemesis soak"),
        hypothesis=exp.get("hypothesis", ""),
        verdict=data.get("verdict") or "unknown",
        reason=data.get("reason") or "",
        started=_clock(data.get("started_at")),
        ended=_clock(data.get("ended_at")),
        soak=soak,
        clients=soak.get("clients") or {},
        kinds=kinds,
        by_component=soak.get("faults_by_component") or {},
        timeline=[
            {"phase": p.get("phase"), "start": _clock(p.get("start")), "end": _clock(p.get("end"))}
            for p in timeline
        ],
        faults=faults,
        chart=convergence_svg(
            soak.get("samples") or [], since, float(soak.get("convergence_bound_s") or 30)
        ),
        checks=soak.get("checks") or [],
        violations=soak.get("violations") or [],
        settings=json.dumps(exp.get("settings") or {}, indent=1),
    )


def write_soak_report(journal_path: Path) -> Path:
    data = json.loads(journal_path.read_text(encoding="utf-8"))
    out = journal_path.parent / REPORT_NAME
    out.write_text(render_soak_report(data), encoding="utf-8")
    return out


def try_write_soak_report(journal_path: Path) -> Path | None:
    """``write_soak_report`` at the end of a soak: a failure is logged, never raised."""
    try:
        return write_soak_report(journal_path)
    except Exception as exc:  # the report informs; the verdict stands without it
        get_logger(__name__).warning(
            "report_failed", journal=str(journal_path), error=f"{type(exc).__name__}: {exc}"
        )
        return None
