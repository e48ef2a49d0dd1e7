"""Alert firings of a run, read back from Prometheus' ``ALERTS`` series.

Prometheus writes one ``ALERTS{alertname, alertstate, ...labels}`` sample per active alert at
every rule evaluation, and a stale marker when the alert goes away. ``alert_firings`` asks for
the raw samples of ``ALERTS{alertstate="firing"}`` over a time range (a range selector in an
instant query returns them with their exact evaluation timestamps) and turns each series' runs
of consecutive samples into ``AlertFiring``s: fired at the first sample, resolved one
evaluation interval after the last one (the evaluation that no longer found it), or ``None``
when it was still firing at the end of the range.

``firings_from_series`` is the pure part (crafted data in the tests); ``alert_firings`` is the
one call to Prometheus, synchronous with a deadline, so that both the runner (in a thread) and
offline analysis can use it.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.errors import TestbedError

__all__ = [
    "AlertFiring",
    "AlertQueryError",
    "alert_firings",
    "firings_from_series",
]

DEFAULT_EVALUATION_INTERVAL_S = 1.0
"""The testbed's rule evaluation interval (``management.prometheus``: equal to the scrape one)."""
GAP_FACTOR = 2.5
"""Samples further apart than this many evaluation intervals belong to two separate firings."""


class AlertQueryError(TestbedError):
    """Prometheus could not be asked (down, slow, or it answered an error)."""


@dataclass(frozen=True)
class AlertFiring:
    """One alert, from when it started firing until it resolved (``None``: still firing)."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    """Every label of the alert but ``alertname``/``alertstate`` (``service``, ``instance``,
    ``severity``, ``caller``, ``route``...: what the rule put there)."""
    fired_at: float = 0.0
    """Unix time of the first evaluation that found the alert firing."""
    resolved_at: float | None = None

    @property
    def service(self) -> str | None:
        return self.labels.get("service")

    @property
    def instance(self) -> str | None:
        return self.labels.get("instance")

    def active_at(self, t: float) -> bool:
        return self.fired_at <= t and (self.resolved_at is None or t < self.resolved_at)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> AlertFiring:
        """The inverse of ``to_data`` (e.g. a journal's ``detection.alerts``, read after the
        stack and its Prometheus are gone)."""
        resolved = data.get("resolved_at")
        return cls(
            name=str(data["name"]),
            labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
            fired_at=float(data["fired_at"]),
            resolved_at=None if resolved is None else float(resolved),
        )

    def to_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "labels": dict(self.labels),
            "fired_at": round(self.fired_at, 3),
            "resolved_at": None if self.resolved_at is None else round(self.resolved_at, 3),
        }


def firings_from_series(
    series: Iterable[tuple[Mapping[str, str], Iterable[float]]],
    *,
    end: float,
    evaluation_interval: float = DEFAULT_EVALUATION_INTERVAL_S,
) -> list[AlertFiring]:
    """Firings from ``(labels, sample timestamps)`` of ``ALERTS{alertstate="firing"}``.

    A run of samples spaced at most ``GAP_FACTOR`` evaluation intervals apart is one firing.
    Its last sample within one evaluation interval (plus the same slack) of ``end`` means the
    alert was still firing when the range was read. Sorted by fired time, then name.
    """
    gap = GAP_FACTOR * evaluation_interval
    out: list[AlertFiring] = []
    for raw_labels, stamps in series:
        labels = {
            k: v for k, v in raw_labels.items() if k not in ("__name__", "alertname", "alertstate")
        }
        name = raw_labels.get("alertname", "")
        times = sorted(t for t in stamps if math.isfinite(t))
        if not times:
            continue
        start = last = times[0]
        for t in times[1:]:
            if t - last > gap:
                out.append(AlertFiring(name, labels, start, last + evaluation_interval))
                start = t
            last = t
        resolved = None if end - last <= gap else last + evaluation_interval
        out.append(AlertFiring(name, labels, start, resolved))
    out.sort(key=lambda f: (f.fired_at, f.name, sorted(f.labels.items())))
    return out


def alert_firings(
    prometheus_url: str,
    start: float,
    end: float,
    *,
    evaluation_interval: float = DEFAULT_EVALUATION_INTERVAL_S,
    timeout: float = 10.0,
) -> list[AlertFiring]:
    """Every alert that fired between ``start`` and ``end`` (Unix seconds), from Prometheus.

    A firing that began before ``start`` is reported with its first sample inside the range as
    ``fired_at`` (clip ``start`` a little early to see it begin). Raises ``AlertQueryError``
    when Prometheus does not answer within ``timeout`` seconds or answers an error.
    """
    if end <= start:
        raise ValueError(f"the range ends ({end}) before it starts ({start})")
    seconds = max(1, math.ceil(end - start))
    query = f'ALERTS{{alertstate="firing"}}[{seconds}s]'
    params = urllib.parse.urlencode({"query": query, "time": f"{end:.3f}"})
    url = prometheus_url.rstrip("/") + "/api/v1/query?" + params
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        raise AlertQueryError(
            f"Prometheus at {prometheus_url} answered {exc.code}: {detail}"
        ) from None
    except (OSError, ValueError) as exc:
        raise AlertQueryError(
            f"cannot read alerts from Prometheus at {prometheus_url}: {exc} "
            "(is the stack up? `testbed status`)"
        ) from None
    if body.get("status") != "success":
        raise AlertQueryError(f"Prometheus refused {query!r}: {body.get('error')}")
    series = [
        (
            {str(k): str(v) for k, v in item.get("metric", {}).items()},
            [float(t) for t, _ in item.get("values", [])],
        )
        for item in body.get("data", {}).get("result", [])
    ]
    return firings_from_series(series, end=end, evaluation_interval=evaluation_interval)
