"""The pages that gather several runs: ``compare.html`` (one experiment, several variants) and
``suite.html`` (the whole catalogue, one row per experiment and claim).

Like ``chaos.report``, the data is prepared here as plain strings and numbers and rendered by
the autoescaped templates in ``chaos/templates/``; only the charts arrive as markup.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from chaos.report import (
    REPORT_NAME,
    _environment,
    load_run,
    render_report,
    sparkline_svg,
    timeline_svg,
    verdict_badge,
)

__all__ = ["COMPARE_NAME", "SUITE_NAME", "write_compare_report", "write_suite_index"]

COMPARE_NAME = "compare.html"
SUITE_NAME = "suite.html"


def _pct(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.2%}"


def _ms(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:,.0f} ms"


def _report_of(journal: Path, out_dir: Path) -> tuple[str, Any, str]:
    """(link to the run's report, the loaded run or None, a note when it cannot be read)."""
    report = journal.with_name(REPORT_NAME)
    try:
        run = load_run(journal)
        if not report.exists():
            report.write_text(render_report(run, _environment()), encoding="utf-8")
    except (OSError, ValueError) as exc:
        return os.path.relpath(report, out_dir), None, f"report not available: {exc}"
    return os.path.relpath(report, out_dir), run, ""


def write_compare_report(
    out_dir: Path,
    *,
    title: str,
    source: str,
    variants: Sequence[tuple[str, str]],
    rows: Sequence[Mapping[str, Any]],
    journals: Sequence[tuple[str, Path | None]],
    sentence: str,
    probes: Sequence[tuple[str, Sequence[str]]] = (),
) -> Path:
    """``compare.html`` in ``out_dir``: the table per variant, the experiment's probes per
    variant, the timelines stacked."""
    settings = dict(variants)
    table = []
    charts = []
    for row, (name, journal) in zip(rows, journals, strict=True):
        href, run, note = (
            ("", None, "no journal") if journal is None else _report_of(journal, out_dir)
        )
        label, css = verdict_badge(str(row.get("verdict")), run.expect if run else "hold")
        rps = row.get("rps")
        table.append(
            {
                "name": name,
                "settings": settings.get(name, ""),
                "href": href,
                "badge": label,
                "badge_css": css,
                "as_expected": bool(row.get("as_expected")),
                "requests": "-" if row.get("requests") is None else str(row.get("requests")),
                "error_ratio": _pct(row.get("error_ratio")),
                "p50": _ms(row.get("p50_ms")),
                "p99": _ms(row.get("p99_ms")),
                "rps": "-" if not isinstance(rps, int | float) else f"{rps:.1f}",
                "audit": str(row.get("audit") or "-"),
                "detected": str(row.get("detected") or "-"),
                "located": str(row.get("located") or "-"),
            }
        )
        charts.append(
            {
                "name": name,
                "settings": settings.get(name, ""),
                "note": note,
                "svg": timeline_svg(run) if run is not None else Markup(""),
            }
        )
    page = (
        _environment()
        .get_template("compare.html")
        .render(
            title=title,
            source=source,
            date=time.strftime("%Y-%m-%d %H:%M"),
            out_dir=str(out_dir),
            sentence=sentence,
            rows=table,
            charts=charts,
            probes=[{"name": n, "cells": list(c)} for n, c in probes],
            variant_names=[name for name, _ in journals],
        )
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / COMPARE_NAME
    out.write_text(page, encoding="utf-8")
    return out


def write_suite_index(
    out_dir: Path, entries: Sequence[Mapping[str, Any]], *, seconds: float
) -> Path:
    """``suite.html``: one row per experiment with its claim, verdict, numbers and picture.

    ``entries``: ``name``, ``claim``, ``result`` (a ``RunResult`` or None) and ``error``.
    """
    rows = []
    for entry in entries:
        result = entry.get("result")
        if result is None:
            rows.append(
                {
                    "name": entry["name"],
                    "claim": entry.get("claim") or "-",
                    "href": "",
                    "title": entry.get("title", ""),
                    "badge": "error",
                    "badge_css": "bad",
                    "as_expected": False,
                    "spark": Markup(""),
                    "shown": str(entry.get("error") or "did not run"),
                    "error_ratio": "-",
                    "p99": "-",
                    "audit": "-",
                }
            )
            continue
        href, run, note = _report_of(Path(result.journal_path), out_dir)
        verdict = result.verdict.value
        label, css = verdict_badge(verdict, run.expect if run is not None else "hold")
        shown = result.outcome if verdict in ("passed", "failed") else (result.reason or "")
        rows.append(
            {
                "name": entry["name"],
                "claim": entry.get("claim") or "-",
                "href": href,
                "title": result.title,
                "badge": label,
                "badge_css": css,
                "as_expected": bool(result.as_expected),
                "spark": sparkline_svg(run) if run is not None else Markup(""),
                "shown": shown + (f" ({note})" if note else ""),
                "error_ratio": _pct(result.error_ratio),
                "p99": _ms(result.p99_ms),
                "audit": result.audit or "-",
            }
        )
    expected = sum(1 for r in rows if r["as_expected"])
    page = (
        _environment()
        .get_template("suite.html")
        .render(
            out_dir=str(out_dir),
            date=time.strftime("%Y-%m-%d %H:%M"),
            expected=expected,
            total=len(rows),
            css="good" if rows and expected == len(rows) else "bad",
            seconds=f"{seconds:.0f}",
            rows=rows,
        )
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / SUITE_NAME
    out.write_text(page, encoding="utf-8")
    return out
