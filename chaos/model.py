"""The experiment file's schema: what a user may write, checked before anything is touched.

An experiment is one YAML document::

    title: One payments instance gets 300 ms of latency
    hypothesis: With the full resilience profile, checkout p99 stays within its SLO.
    expect: hold            # or 'deviate': the hypothesis is meant to be refuted (a drawback shown)
    seed: 7                 # blast radius picks instances reproducibly from it
    requires: {resilience: {gateway: full}}
    load: {users: 12, duration: 40s, shape: steady}
    steady_state:           # the hypothesis, checked before the method and at the end
      - {name: checkout-p99, type: locust, metric: p99, request: checkout, over: method,
         tolerance: {max: 1000}}
    method:
      - pause: 5s
      - fault: {type: network.latency, target: {service: payments}, blast_radius: one,
                duration: 15s, latency_ms: 300}
      - parallel: [...]     # or sequence: [...]
    safeguards:
      - {probe: {type: locust, metric: error_ratio, tolerance: {max: 0.5}}, for: 10s}
    verify:                 # checked once at the end only (e.g. the data audit)
      - {name: audit, type: audit, tolerance: {equals: 0}}

Durations are numbers of seconds or strings like ``500ms``, ``20s``, ``2m``. Every model
forbids unknown fields, so a typo is an error naming the line, not a silently ignored setting.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from load.runner import MAX_WORKERS

__all__ = [
    "CLAIMS",
    "FAULT_TYPES",
    "PARTS",
    "AuditProbe",
    "BadBuild",
    "BlastRadius",
    "CanarySpec",
    "DeployStep",
    "EjectionProbe",
    "Experiment",
    "FaultSpec",
    "FaultStep",
    "FloodStep",
    "HttpProbe",
    "LoadSpec",
    "LocustProbe",
    "NetworkFault",
    "ParallelStep",
    "PauseStep",
    "ProbeSpec",
    "ProcessFault",
    "PrometheusProbe",
    "Safeguard",
    "ScaleStep",
    "SequenceStep",
    "ServiceFault",
    "Step",
    "Target",
    "Tolerance",
    "parse_duration",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``"500ms"``, ``"20s"``, ``"2m"``, ``"1h"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '20s'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"{value!r} is not a duration; write e.g. 500ms, 20s or 2m")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ---- tolerances ------------------------------------------------------------------------------
class Tolerance(_Model):
    """What a probe's value must be: bounds (``min``/``max``), ``equals`` or a ``range``."""

    min: float | None = None
    max: float | None = None
    equals: float | str | bool | None = None
    range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one_style(self) -> Tolerance:
        styles = [
            s
            for s, on in (
                ("min/max", self.min is not None or self.max is not None),
                ("equals", self.equals is not None),
                ("range", self.range is not None),
            )
            if on
        ]
        if not styles:
            raise ValueError("give 'max', 'min', 'equals' or 'range: [low, high]'")
        if len(styles) > 1:
            raise ValueError(f"use one style of tolerance, not {' and '.join(styles)}")
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range {list(self.range)}: low must not exceed high")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} exceeds max {self.max}")
        return self

    def accepts(self, value: float | str | bool | None) -> bool:
        """Whether ``value`` is within this tolerance (``None``, no value, never is)."""
        if value is None:
            return False
        if self.equals is not None:
            if isinstance(self.equals, bool) or isinstance(value, bool | str):
                return value == self.equals
            if isinstance(self.equals, str):
                return str(value) == self.equals
            return float(value) == float(self.equals)
        if isinstance(value, str | bool):
            return False
        low, high = self.range if self.range is not None else (self.min, self.max)
        return (low is None or value >= low) and (high is None or value <= high)

    def describe(self) -> str:
        if self.equals is not None:
            return f"== {self.equals}"
        if self.range is not None:
            return f"in [{self.range[0]:g}, {self.range[1]:g}]"
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        return " and ".join(parts)


# ---- probes ----------------------------------------------------------------------------------
When = Literal["before", "after"]


class _Probe(_Model):
    name: str = ""
    tolerance: Tolerance
    when: tuple[When, ...] = ("before", "after")


class PrometheusProbe(_Probe):
    """An instant PromQL query against the stack's Prometheus; a single number is expected."""

    type: Literal["prometheus"]
    query: str = Field(min_length=1)
    reduce: Literal["sum", "max", "min", "avg", "single"] = "single"
    empty: float | None = None
    """The value when the query returns no series (default: no value, which fails)."""


class HttpProbe(_Probe):
    """An HTTP request; its value is the status code (0: no answer) or the ``json_path`` field.

    ``url`` may use the stack's addresses: ``{balancer}``, ``{gateway}``, ``{pop:sa}``,
    ``{prometheus}``, ``{toxiproxy}``.
    """

    type: Literal["http"]
    url: str = Field(min_length=1)
    method: Literal["GET", "HEAD", "POST"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    json_path: str | None = None
    timeout: Duration = 3.0


class LocustProbe(_Probe):
    """Locust's live statistics of the experiment's load.

    ``over``: ``window`` — the last ``window`` seconds (live; for safeguards); ``method`` —
    from the method's start to its end; ``run`` — the whole load run. ``p50``/``p95``/``p99``
    over a span are the worst 10-second-window percentile Locust reported in it (ms).
    """

    type: Literal["locust"]
    metric: Literal["error_ratio", "p50", "p95", "p99", "rps", "requests", "failures"]
    request: str = "Aggregated"
    over: Literal["window", "method", "run"] = "window"
    window: Duration = 5.0


class AuditProbe(_Probe):
    """The data audit across services; its value is the number of violations found."""

    type: Literal["audit"]
    when: tuple[When, ...] = ("after",)


class EjectionProbe(_Probe):
    """Seconds from the named fault's application until the load balancer took the faulted
    instance out of rotation, read from the balancer's admin API (``GET /ejections``: when
    and why each instance left). No value if it was never taken out; the slowest one when
    the fault hit several instances."""

    type: Literal["ejection"]
    fault: str = Field(min_length=1)
    when: tuple[When, ...] = ("after",)


ProbeSpec = Annotated[
    PrometheusProbe | HttpProbe | LocustProbe | AuditProbe | EjectionProbe,
    Field(discriminator="type"),
]


class Safeguard(_Model):
    """Abort the method when ``probe`` is outside its tolerance for ``for`` seconds."""

    name: str = ""
    probe: ProbeSpec
    for_: Duration = Field(default=0.0, alias="for")
    every: Duration = Field(default=1.0, gt=0)


# ---- targets and faults ----------------------------------------------------------------------
class Target(_Model):
    """Exactly one of: a ``service`` (all its instances), one ``instance``, or a ``link``.

    A link is named ``<from>-><to>`` as in the topology (e.g. ``cdn-sa->balancer`` for one PoP's
    link, or ``cdn->balancer`` for every PoP's).
    """

    service: str | None = None
    instance: str | None = None
    link: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        given = [k for k in ("service", "instance", "link") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'service', 'instance' or 'link'"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.link is not None and "->" not in self.link:
            raise ValueError(f"link {self.link!r} must be written '<from>-><to>'")
        return self

    def describe(self) -> str:
        if self.service is not None:
            return f"service {self.service}"
        if self.instance is not None:
            return f"instance {self.instance}"
        return f"link {self.link}"


_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def _blast(value: Any) -> Any:
    if isinstance(value, str):
        m = _PERCENT.match(value)
        if m:
            pct = float(m.group(1))
            if not 0 < pct <= 100:
                raise ValueError(f"{value!r}: a percentage must be above 0% and at most 100%")
            return pct
        if value in ("one", "all"):
            return value
    raise ValueError(f"{value!r} is not a blast radius; write 'one', 'all' or a percentage '50%'")


BlastRadius = Annotated[Literal["one", "all"] | float, BeforeValidator(_blast)]


class _Fault(_Model):
    name: str = ""
    target: Target
    blast_radius: BlastRadius = "all"
    duration: Duration = Field(default=10.0, le=3600)


class NetworkFault(_Fault):
    """A Toxiproxy toxic (or the proxy disabled, for ``network.down``) on the target's proxies."""

    type: Literal[
        "network.latency",
        "network.timeout",
        "network.reset_peer",
        "network.bandwidth",
        "network.slicer",
        "network.limit_data",
        "network.down",
    ]
    stream: Literal["upstream", "downstream"] = "downstream"
    toxicity: float = Field(default=1.0, ge=0, le=1)
    latency_ms: int | None = Field(default=None, ge=0)
    jitter_ms: int = Field(default=0, ge=0)
    timeout_ms: int | None = Field(default=None, ge=0)
    rate_kbps: int | None = Field(default=None, ge=0)
    average_size: int | None = Field(default=None, ge=1)
    size_variation: int = Field(default=0, ge=0)
    delay_us: int = Field(default=0, ge=0)
    bytes: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _params(self) -> NetworkFault:
        needs = {
            "network.latency": "latency_ms",
            "network.bandwidth": "rate_kbps",
            "network.slicer": "average_size",
            "network.limit_data": "bytes",
        }
        field_name = needs.get(self.type)
        if field_name is not None and getattr(self, field_name) is None:
            raise ValueError(f"{self.type} needs '{field_name}'")
        return self

    def toxic(self) -> tuple[str, dict[str, int]] | None:
        """Toxiproxy's toxic type and attributes (``None`` for ``network.down``)."""
        kind = self.type.removeprefix("network.")
        match kind:
            case "latency":
                return "latency", {"latency": self.latency_ms or 0, "jitter": self.jitter_ms}
            case "timeout":
                return "timeout", {"timeout": self.timeout_ms or 0}
            case "reset_peer":
                return "reset_peer", {"timeout": self.timeout_ms or 0}
            case "bandwidth":
                return "bandwidth", {"rate": self.rate_kbps or 0}
            case "slicer":
                return "slicer", {
                    "average_size": self.average_size or 1,
                    "size_variation": self.size_variation,
                    "delay": self.delay_us,
                }
            case "limit_data":
                return "limit_data", {"bytes": self.bytes or 0}
        return None


class ProcessFault(_Fault):
    """A signal to the target's processes: ``kill`` (-9), ``freeze`` (SIGSTOP..SIGCONT), ``stop``.

    ``kill``: the supervisor restarts the process; the fault holds for ``duration`` (the
    recovery window), and its rollback makes sure the instance runs again. ``stop``: a graceful
    stop; rollback starts it again.
    """

    type: Literal["process.kill", "process.freeze", "process.stop"]
    recover_within: Duration = Field(default=20.0, gt=0)


class ServiceFault(_Fault):
    """An in-service fault through each instance's admin API."""

    type: Literal[
        "service.error_rate",
        "service.latency",
        "service.hang",
        "service.cpu_burn",
        "service.memory_leak",
        "service.crash_after",
    ]
    rate: float = Field(default=1.0, ge=0, le=1)
    status: int = Field(default=500, ge=400, le=599)
    latency_ms: int = Field(default=0, ge=0)
    jitter_ms: int = Field(default=0, ge=0)
    share: float = Field(default=0.5, gt=0, le=1)
    """``service.cpu_burn``: the share of one core to burn."""
    mb_per_second: float = Field(default=1.0, gt=0, le=1024)
    max_mb: int = Field(default=256, gt=0, le=4096)
    routes: tuple[str, ...] | None = None
    """Request faults only: the route templates affected (default: every route)."""
    points: tuple[str, ...] = ("charged",)
    """``service.crash_after``: the steps after which the process exits at once, as a crash
    would (orders: started, reserved, charged, compensating, confirmed, failed; payments:
    charge_pending). It makes "a crash in the middle of a checkout" certain instead of lucky."""


FaultSpec = Annotated[NetworkFault | ProcessFault | ServiceFault, Field(discriminator="type")]
FAULT_TYPES: tuple[str, ...] = tuple(
    t
    for cls in (NetworkFault, ProcessFault, ServiceFault)
    for t in cls.model_fields["type"].annotation.__args__  # type: ignore[union-attr]
)


# ---- method steps ----------------------------------------------------------------------------
class PauseStep(_Model):
    pause: Duration = Field(le=3600)


class FaultStep(_Model):
    fault: FaultSpec


class ScaleSpec(_Model):
    service: str = Field(min_length=1)
    instances: int = Field(ge=0, le=10)


class ScaleStep(_Model):
    """Scale a component live (``testbed scale``): new instances start, register, take load."""

    scale: ScaleSpec


class BadBuild(_Model):
    """A canary's new version made bad on purpose: an in-service fault through the canary
    instance's admin API, on for the judging window, on that instance only."""

    type: Literal["service.error_rate", "service.latency"]
    rate: float = Field(default=1.0, gt=0, le=1)
    status: int = Field(default=500, ge=500, le=599)
    latency_ms: int = Field(default=0, ge=0, le=60_000)
    jitter_ms: int = Field(default=0, ge=0, le=60_000)
    routes: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _latency_given(self) -> BadBuild:
        if self.type == "service.latency" and self.latency_ms <= 0:
            raise ValueError("a service.latency bad build needs 'latency_ms' above 0")
        return self


class CanarySpec(_Model):
    """``deploy`` as a canary (``testbed deploy --canary``): one instance of the new version
    takes ``share`` of the traffic, is judged for ``judge_for`` against the old version, then
    promoted (rolling deploy) or rolled back."""

    share: float = Field(default=0.2, gt=0, lt=1)
    judge_for: Duration = Field(default=30.0, gt=0, le=600)
    max_error_ratio_increase: float = Field(default=0.02, ge=0, le=1)
    max_p99_ratio: float = Field(default=1.5, ge=1, le=100)
    min_requests: int = Field(default=20, ge=1, le=1_000_000)
    promote_inconclusive: bool = False
    bad_build: BadBuild | None = None


class DeploySpec(_Model):
    service: str = Field(min_length=1)
    version: str = Field(min_length=1, max_length=40)
    canary: CanarySpec | None = None


class DeployStep(_Model):
    """A rolling deploy of one component (``testbed deploy``), one instance at a time; with
    ``canary``, a judged canary first."""

    deploy: DeploySpec


class FloodSpec(_Model):
    """Requests as fast as ``rate`` allows, from one client with one API key."""

    url: str = Field(default="{balancer}/api/products/p-001", min_length=1)
    api_key: str = Field(min_length=1)
    rate: float = Field(gt=0, le=2000)
    duration: Duration = Field(gt=0, le=600)
    concurrency: int = Field(default=8, ge=1, le=64)


class FloodStep(_Model):
    """One noisy client floods the front door with its own key (rate limits, isolation)."""

    flood: FloodSpec


class ParallelStep(_Model):
    parallel: list[Step] = Field(min_length=1)


class SequenceStep(_Model):
    sequence: list[Step] = Field(min_length=1)


_STEP_KEYS = ("pause", "fault", "parallel", "sequence", "scale", "deploy", "flood")


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        keys = [k for k in _STEP_KEYS if k in value]
        return keys[0] if len(keys) == 1 else None
    if isinstance(value, BaseModel):
        for k in _STEP_KEYS:
            if k in type(value).model_fields:
                return k
    return None


Step = Annotated[
    Annotated[PauseStep, Tag("pause")]
    | Annotated[FaultStep, Tag("fault")]
    | Annotated[ParallelStep, Tag("parallel")]
    | Annotated[SequenceStep, Tag("sequence")]
    | Annotated[ScaleStep, Tag("scale")]
    | Annotated[DeployStep, Tag("deploy")]
    | Annotated[FloodStep, Tag("flood")],
    Discriminator(
        _step_kind,
        custom_error_type="step",
        custom_error_message=(
            "a step is a mapping with exactly one of 'pause', 'fault', 'parallel', 'sequence', "
            "'scale', 'deploy', 'flood'"
        ),
    ),
]
ParallelStep.model_rebuild()
SequenceStep.model_rebuild()


# ---- load and the experiment -----------------------------------------------------------------
class LoadSpec(_Model):
    """The Locust load the method runs under (see ``load/``)."""

    users: int = Field(default=10, ge=1, le=2000)
    spawn_rate: float = Field(default=20.0, gt=0)
    rate: float | None = Field(default=None, gt=0)
    """Arrivals per second: open loop (constant arrival rate) instead of closed-loop users."""
    shape: Literal["steady", "step", "spike"] = "steady"
    duration: Duration = Field(default=60.0, gt=0, le=24 * 3600)
    warmup: Duration = Field(default=5.0, le=600)
    """Load runs this long before the steady state is checked."""
    locustfile: str | None = None
    """Path of another locustfile (default: the shopper journeys in ``load/locustfile.py``)."""
    checkout_weight: int | None = Field(default=None, ge=0, le=100)
    workers: int = Field(default=0, ge=0, le=MAX_WORKERS)
    """0: one Locust process; N: Locust's master and N worker processes (same statistics)."""

    @model_validator(mode="after")
    def _workers_have_users(self) -> LoadSpec:
        if self.workers > self.users:
            raise ValueError(
                f"{self.workers} workers for {self.users} users would leave workers idle; "
                "use at most as many workers as users"
            )
        return self


CLAIMS: tuple[str, ...] = (
    "scalability",
    "flexibility",
    "faster-deploys",
    "resilience",
    "data-consistency",
    "complexity",
    "network-latency",
    "error-handling",
)
"""The eight claims about microservices the testbed measures (three benefits, resilience and
consistency, three drawbacks)."""
PARTS: tuple[str, ...] = ("load-balancer", "cdn", "api-gateway", "management")
"""The four parts around the services, each with experiments of its own."""
Claim = Literal[
    "scalability",
    "flexibility",
    "faster-deploys",
    "resilience",
    "data-consistency",
    "complexity",
    "network-latency",
    "error-handling",
    "load-balancer",
    "cdn",
    "api-gateway",
    "management",
]


class Requires(_Model):
    """What the stack must run with (checked before anything is touched; the demo sets it)."""

    resilience: dict[str, Literal["none", "basic", "full"]] = Field(default_factory=dict)
    consistency: dict[str, Literal["saga", "naive"]] = Field(default_factory=dict)
    instances: dict[str, int] = Field(default_factory=dict)


class Experiment(_Model):
    title: str = Field(min_length=1)
    hypothesis: str = Field(min_length=1)
    description: str = ""
    expect: Literal["hold", "deviate"] = "hold"
    """``deviate``: the hypothesis is meant to be refuted — a drawback the experiment shows."""
    deviation: tuple[str, ...] = ()
    """``expect: deviate`` only: the names of the probes that must fail (and no other), so the
    experiment is "as expected" only when it fails for the stated reason."""
    claim: Claim | None = None
    """The claim (or part) about microservices this experiment demonstrates; every shipped
    experiment has one."""
    seed: int = 0
    requires: Requires = Field(default_factory=Requires)
    load: LoadSpec | None = None
    steady_state: list[ProbeSpec] = Field(default_factory=list)
    method: list[Step] = Field(min_length=1)
    safeguards: list[Safeguard] = Field(default_factory=list)
    verify: list[ProbeSpec] = Field(default_factory=list)
    settle: Duration = Field(default=2.0, le=600)
    """After the method's faults are rolled back, wait this long before the final checks."""

    @model_validator(mode="after")
    def _deviation_named(self) -> Experiment:
        if self.expect == "deviate" and not self.deviation:
            raise ValueError(
                "an experiment that expects to deviate must name the deviation: add e.g. "
                "'deviation: [audit]' (the probes that must fail, and no other)"
            )
        if self.expect == "hold" and self.deviation:
            raise ValueError("'deviation' is for 'expect: deviate' only; remove it")
        return self
