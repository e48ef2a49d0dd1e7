"""Locust's live statistics, read from its ``--csv-full-history`` file while it runs.

Locust appends one row per request name (plus ``Aggregated``) to ``<prefix>_stats_history.csv``
every second, with cumulative request/failure counts and the *current* (last 10 s) response time
percentiles. Reading that file needs no extra port or HTTP server in the load process and leaves
the same history behind for the report. Our locustfile sets the flush interval to one second
(Locust's default is five), so the view lags the load by at most about two seconds.

From cumulative counts, the error ratio of any span (the last few seconds, the method, the run)
is exact: failures over requests between the rows bracketing it. Percentiles of a span are the
worst 10-second-window percentile Locust reported in it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["HistoryRow", "LocustStats"]

AGGREGATED = "Aggregated"


@dataclass(frozen=True)
class HistoryRow:
    timestamp: float
    user_count: int
    name: str
    rps: float
    fail_per_s: float
    percentiles: dict[str, float]
    """``"50%"``, ``"95%"``, ``"99%"`` ... -> ms (current 10 s window)."""
    requests: int
    failures: int


def _num(raw: str) -> float | None:
    try:
        return float(raw)
    except ValueError:
        return None


@dataclass
class LocustStats:
    """Incremental reader of one run's stats history file."""

    path: Path
    rows: list[HistoryRow] = field(default_factory=list)
    _offset: int = 0
    _header: list[str] | None = None
    _partial: str = ""

    @classmethod
    def for_prefix(cls, prefix: Path) -> LocustStats:
        return cls(Path(f"{prefix}_stats_history.csv"))

    def refresh(self) -> int:
        """Read rows appended since the last call (blocking file I/O: call in a thread)."""
        try:
            with self.path.open("r", encoding="utf-8", newline="") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
                self._offset = fh.tell()
        except FileNotFoundError:
            return 0
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()  # an incomplete last line waits for the next read
        added = 0
        for record in csv.reader(io.StringIO("\n".join(lines))):
            if not record:
                continue
            if self._header is None:
                self._header = record
                continue
            row = self._parse(record)
            if row is not None:
                self.rows.append(row)
                added += 1
        return added

    def _parse(self, record: list[str]) -> HistoryRow | None:
        assert self._header is not None
        data = dict(zip(self._header, record, strict=False))
        ts = _num(data.get("Timestamp", ""))
        if ts is None:
            return None
        pct = {
            k: v
            for k in self._header
            if k.endswith("%") and (v := _num(data.get(k, ""))) is not None
        }
        return HistoryRow(
            timestamp=ts,
            user_count=int(_num(data.get("User Count", "0")) or 0),
            name=data.get("Name", ""),
            rps=_num(data.get("Requests/s", "0")) or 0.0,
            fail_per_s=_num(data.get("Failures/s", "0")) or 0.0,
            percentiles=pct,
            requests=int(_num(data.get("Total Request Count", "0")) or 0),
            failures=int(_num(data.get("Total Failure Count", "0")) or 0),
        )

    # -- queries -------------------------------------------------------------------------------
    def _series(self, name: str) -> list[tuple[float, int, int, list[HistoryRow]]]:
        """Per timestamp: (ts, requests, failures, rows) summed over rows matching ``name``."""
        by_ts: dict[float, list[HistoryRow]] = {}
        for row in self.rows:
            if row.name == name:
                by_ts.setdefault(row.timestamp, []).append(row)
        return [
            (ts, sum(r.requests for r in rows), sum(r.failures for r in rows), rows)
            for ts, rows in sorted(by_ts.items())
        ]

    def latest_timestamp(self) -> float | None:
        return self.rows[-1].timestamp if self.rows else None

    def counts(
        self, name: str = AGGREGATED, since: float | None = None, until: float | None = None
    ) -> tuple[int, int]:
        """(requests, failures) completed between ``since`` and ``until`` (Unix seconds)."""
        series = self._series(name)
        if not series:
            return 0, 0
        end = [s for s in series if until is None or s[0] <= until]
        if not end:
            return 0, 0
        _, req_end, fail_end, _ = end[-1]
        base = [s for s in series if since is not None and s[0] <= since]
        req_base, fail_base = (base[-1][1], base[-1][2]) if base else (0, 0)
        return max(0, req_end - req_base), max(0, fail_end - fail_base)

    def error_ratio(
        self, name: str = AGGREGATED, since: float | None = None, until: float | None = None
    ) -> float | None:
        requests, failures = self.counts(name, since, until)
        return None if requests == 0 else round(failures / requests, 5)

    def percentile(
        self, p: str, name: str = AGGREGATED, since: float | None = None, until: float | None = None
    ) -> float | None:
        """Worst current-window percentile ``p`` (e.g. ``"99%"``) reported in the span, ms."""
        values = [
            r.percentiles[p]
            for ts, _, _, rows in self._series(name)
            if (since is None or ts >= since) and (until is None or ts <= until)
            for r in rows
            if p in r.percentiles
        ]
        return max(values) if values else None

    def current_percentile(self, p: str, name: str = AGGREGATED) -> float | None:
        series = self._series(name)
        for _, _, _, rows in reversed(series):
            values = [r.percentiles[p] for r in rows if p in r.percentiles]
            if values:
                return max(values)
        return None

    def current_rps(self, name: str = AGGREGATED) -> float | None:
        series = self._series(name)
        return sum(r.rps for r in series[-1][3]) if series else None

    def user_count(self) -> int:
        return self.rows[-1].user_count if self.rows else 0
