"""Judging a canary: the new version's error ratio and p99 against the old one's, from Prometheus.

``testbed deploy SERVICE --version V --canary`` (``Stack.canary``) starts one extra instance of
SERVICE at V beside the old ones; callers send it about ``share`` of the traffic (registry
metadata, ``mesh.balancing``). After ``judge_for`` seconds the RPC server metrics of the two
groups (the canary's instance id against every other instance of the job) are compared here:

- fewer than ``min_requests`` on either side: **inconclusive** (too little traffic to tell);
- the canary's error ratio (5xx answers) exceeds the old one's by more than
  ``max_error_ratio_increase`` (absolute, e.g. 0.02 = two points): **rollback**;
- the canary's p99 exceeds ``max_p99_ratio`` times the old one's (the old p99 counted as at
  least ``p99_floor_seconds``, so a 2 ms baseline does not turn 4 ms into a failure): **rollback**;
- otherwise: **promote**.

``judge`` is a pure function over the two samples; ``sample`` reads them from Prometheus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import aiohttp

from mesh.errors import TestbedError

__all__ = [
    "CanaryError",
    "Decision",
    "Judgement",
    "Thresholds",
    "VersionSample",
    "judge",
    "sample",
]

Decision = Literal["promote", "rollback", "inconclusive"]
_NOT_SERVED = "/(healthz|readyz|metrics)"
_QUERY_TIMEOUT = aiohttp.ClientTimeout(total=5.0)


class CanaryError(TestbedError):
    """The canary could not be judged (Prometheus did not answer); it is rolled back."""


@dataclass(frozen=True)
class VersionSample:
    """What one version's instances served during the judging window."""

    version: str
    requests: float
    errors: float
    p99_seconds: float | None

    @property
    def error_ratio(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    def describe(self) -> str:
        ratio = "n/a" if self.error_ratio is None else f"{self.error_ratio:.2%}"
        p99 = "n/a" if self.p99_seconds is None else f"{self.p99_seconds * 1000:.0f} ms"
        return f"{self.version}: {self.requests:.0f} requests, error ratio {ratio}, p99 {p99}"


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """When a canary is worse than the old version (see the module's docstring)."""

    min_requests: int = 20
    max_error_ratio_increase: float = 0.02
    max_p99_ratio: float = 1.5
    p99_floor_seconds: float = 0.010

    def __post_init__(self) -> None:
        if self.min_requests < 1:
            raise ValueError("min_requests must be at least 1")
        if not 0 <= self.max_error_ratio_increase <= 1:
            raise ValueError("max_error_ratio_increase must lie within 0-1")
        if self.max_p99_ratio < 1:
            raise ValueError("max_p99_ratio must be at least 1 (1 = no slower than the old)")


@dataclass(frozen=True)
class Judgement:
    """The verdict on a canary, with the numbers it rests on."""

    decision: Decision
    reasons: tuple[str, ...]
    old: VersionSample
    new: VersionSample

    @property
    def share(self) -> float | None:
        """The canary's observed share of the service's requests."""
        total = self.old.requests + self.new.requests
        return self.new.requests / total if total > 0 else None

    def summary(self) -> str:
        share = "n/a" if self.share is None else f"{self.share:.0%}"
        return (
            f"{self.decision}: {'; '.join(self.reasons)} "
            f"(canary share {share}; {self.new.describe()}; {self.old.describe()})"
        )


def judge(old: VersionSample, new: VersionSample, thresholds: Thresholds) -> Judgement:
    """Promote, roll back or say the traffic was too little to tell (pure)."""
    low = [
        f"{s.version} served {s.requests:.0f} requests, fewer than {thresholds.min_requests}"
        for s in (new, old)
        if s.requests < thresholds.min_requests
    ]
    if low:
        return Judgement("inconclusive", (*low, "too little traffic to judge"), old, new)
    reasons: list[str] = []
    old_ratio, new_ratio = old.error_ratio or 0.0, new.error_ratio or 0.0
    if new_ratio - old_ratio > thresholds.max_error_ratio_increase:
        reasons.append(
            f"error ratio {new_ratio:.2%} vs {old_ratio:.2%}: more than "
            f"{thresholds.max_error_ratio_increase:.2%} worse"
        )
    if new.p99_seconds is not None and old.p99_seconds is not None:
        baseline = max(old.p99_seconds, thresholds.p99_floor_seconds)
        if new.p99_seconds > baseline * thresholds.max_p99_ratio:
            reasons.append(
                f"p99 {new.p99_seconds * 1000:.0f} ms vs {old.p99_seconds * 1000:.0f} ms: more "
                f"than {thresholds.max_p99_ratio:g}x"
            )
    if reasons:
        return Judgement("rollback", tuple(reasons), old, new)
    return Judgement(
        "promote",
        (
            f"error ratio within +{thresholds.max_error_ratio_increase:.2%} and p99 within "
            f"{thresholds.max_p99_ratio:g}x of the old version",
        ),
        old,
        new,
    )


async def _query(http: aiohttp.ClientSession, prometheus_url: str, promql: str) -> list[object]:
    url = prometheus_url.rstrip("/") + "/api/v1/query"
    try:
        async with http.get(url, params={"query": promql}, timeout=_QUERY_TIMEOUT) as resp:
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise CanaryError(f"Prometheus at {prometheus_url} did not answer: {exc}") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        raise CanaryError(f"Prometheus refused {promql!r}: {body}")
    result = body.get("data", {}).get("result", [])
    return list(result) if isinstance(result, list) else []


def _values(result: list[object]) -> dict[str, float]:
    """instance label -> value (NaN dropped)."""
    out: dict[str, float] = {}
    for item in result:
        if not isinstance(item, dict):
            continue
        value = float(item["value"][1])
        if not math.isnan(value):
            out[str(item.get("metric", {}).get("instance", ""))] = value
    return out


async def sample(
    http: aiohttp.ClientSession,
    prometheus_url: str,
    *,
    job: str,
    canary_instance: str,
    old_version: str,
    new_version: str,
    window_seconds: float,
) -> tuple[VersionSample, VersionSample]:
    """(old, new) over the last ``window_seconds``, from the RPC server metrics of ``job``."""
    window = f"{max(1, round(window_seconds))}s"
    served = f'job="{job}",route!~"{_NOT_SERVED}"'
    by_instance = "sum by (instance) (increase(http_server_requests_total{%s%s}[%s]))"
    requests = _values(await _query(http, prometheus_url, by_instance % (served, "", window)))
    errors = _values(
        await _query(http, prometheus_url, by_instance % (served, ',code=~"5.."', window))
    )
    p99: dict[str, float | None] = {}
    for side, match in (("new", "="), ("old", "!=")):
        promql = (
            "histogram_quantile(0.99, sum by (le) (increase("
            f'http_server_request_duration_seconds_bucket{{{served},instance{match}"{canary_instance}"}}'
            f"[{window}])))"
        )
        found = _values(await _query(http, prometheus_url, promql))
        p99[side] = next(iter(found.values()), None)

    def total(values: dict[str, float], canary: bool) -> float:
        return sum(v for k, v in values.items() if (k == canary_instance) == canary)

    old = VersionSample(old_version, total(requests, False), total(errors, False), p99["old"])
    new = VersionSample(new_version, total(requests, True), total(errors, True), p99["new"])
    return old, new
