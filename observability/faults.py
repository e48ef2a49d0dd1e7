"""In-service faults, switched on and off at runtime through the admin API (as podinfo does).

Kinds (one active fault per kind; setting a kind again replaces it):

``error``    answer ``status`` (default 500, or the one matching ``code``) with probability
             ``rate``, in the shared error shape, without running the handler
``latency``  wait ``fixed_ms`` plus a uniform ``[0, jitter_ms]`` before handling, with
             probability ``rate``
``hang``     never answer (with probability ``rate``) until the fault is cleared or the client
             gives up
``cpu``      burn ``share`` of one core
``memory``   grow by ``mb_per_s`` MB per second up to ``max_mb``, freed when cleared

Request faults (error, latency, hang) can be limited to some route templates (``routes``).
Every kind takes an optional ``duration_s`` after which it switches itself off.
Health and metrics endpoints are never affected, so they stay truthful during a drill.

CPU burn runs in a daemon thread that hashes a buffer with ``hashlib``: CPython releases the
GIL while hashing buffers over 2 KiB, so the burn is real CPU time of this process (visible
in ``process_cpu_seconds_total``) while the event loop keeps answering. A worker process would
not show up in this process's CPU metrics; a pure-Python busy loop would hold the GIL and
stall the loop rather than compete for the core. The thread runs a duty cycle: busy for
``share`` of each 100 ms period, asleep for the rest.

The memory leak allocates on the event loop (a few MB per tick, filled so the pages are really
resident) and is bounded by ``max_mb`` (at most 4096).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from observability.errors import CODE_TO_STATUS, RPC_ERRORS, ErrorShape, code_for_status
from observability.logs import get_logger
from observability.metrics import route_template
from observability.middleware import CLIENT_CLOSED, FAULT_KEY, QUIET_ROUTES

__all__ = [
    "FAULT_KINDS",
    "ActiveFault",
    "CpuFault",
    "ErrorFault",
    "FaultController",
    "FaultSpec",
    "HangFault",
    "LatencyFault",
    "MemoryFault",
    "make_fault_middleware",
    "parse_fault",
]

_log = get_logger("observability.faults")

MAX_DURATION_S: Final = 7 * 24 * 3600.0
MAX_DELAY_MS: Final = 600_000.0
MAX_LEAK_MB: Final = 4096
RpcCode = Literal[
    "canceled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
]

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Duration = Annotated[float | None, Field(default=None, gt=0.0, le=MAX_DURATION_S)]


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    duration_s: Duration = None
    """Switch the fault off by itself after this many seconds (default: until cleared)."""


class _RequestFault(_Fault):
    rate: Rate = 1.0
    """Probability that a request is affected."""
    routes: tuple[str, ...] | None = Field(default=None, min_length=1, max_length=64)
    """Route templates affected (``/testbed.orders.v1.OrderService/PlaceOrder``); default all."""

    @field_validator("routes", mode="before")
    @classmethod
    def _routes_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            return tuple(value)
        return value

    @field_validator("routes")
    @classmethod
    def _routes_are_templates(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for route in value or ():
            if not route.startswith("/"):
                raise ValueError(f"route {route!r} must be a route template starting with '/'")
        return value

    def applies_to(self, route: str) -> bool:
        return self.routes is None or route in self.routes


class ErrorFault(_RequestFault):
    kind: Literal["error"] = "error"
    status: int | None = Field(default=None, ge=400, le=599)
    """HTTP status of the answer; default from ``code``, else 500."""
    code: RpcCode | None = None
    """RPC code in the answer body; default from ``status``."""
    message: str = Field(default="injected fault", min_length=1, max_length=500)

    @model_validator(mode="after")
    def _fill_status_and_code(self) -> ErrorFault:
        status = self.status
        if status is None:
            status = CODE_TO_STATUS[self.code] if self.code is not None else 500
        code = self.code if self.code is not None else code_for_status(status)
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "code", code)
        return self


class LatencyFault(_RequestFault):
    kind: Literal["latency"] = "latency"
    fixed_ms: float = Field(default=0.0, ge=0.0, le=MAX_DELAY_MS)
    jitter_ms: float = Field(default=0.0, ge=0.0, le=MAX_DELAY_MS)

    @model_validator(mode="after")
    def _some_delay(self) -> LatencyFault:
        if self.fixed_ms == 0.0 and self.jitter_ms == 0.0:
            raise ValueError("fixed_ms or jitter_ms must be above 0")
        return self

    def delay_s(self, rng: random.Random) -> float:
        return (self.fixed_ms + rng.uniform(0.0, self.jitter_ms)) / 1000.0


class HangFault(_RequestFault):
    kind: Literal["hang"] = "hang"


class CpuFault(_Fault):
    kind: Literal["cpu"] = "cpu"
    share: float = Field(gt=0.0, le=1.0)
    """Share of one core to burn, in (0, 1]."""


class MemoryFault(_Fault):
    kind: Literal["memory"] = "memory"
    mb_per_s: float = Field(gt=0.0, le=1024.0)
    max_mb: int = Field(default=256, gt=0, le=MAX_LEAK_MB)


FaultSpec = ErrorFault | LatencyFault | HangFault | CpuFault | MemoryFault
_MODELS: Final[dict[str, type[_Fault]]] = {
    "error": ErrorFault,
    "latency": LatencyFault,
    "hang": HangFault,
    "cpu": CpuFault,
    "memory": MemoryFault,
}
FAULT_KINDS: Final = tuple(_MODELS)


class FaultInputError(ValueError):
    """A fault body is malformed; the message says what to fix."""


def parse_fault(kind: str, body: Any) -> FaultSpec:
    """Validate a fault body (a decoded JSON object) for ``kind``; raises ``FaultInputError``."""
    model = _MODELS.get(kind)
    if model is None:
        raise FaultInputError(f"unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}")
    if not isinstance(body, dict):
        raise FaultInputError("the body must be a JSON object")
    if body.get("kind", kind) != kind:
        raise FaultInputError(f"body kind {body.get('kind')!r} does not match the URL's {kind!r}")
    try:
        spec = model.model_validate(body)
    except ValidationError as exc:
        reasons = []
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "body"
            reasons.append(f"{where}: {err['msg']}")
        raise FaultInputError("; ".join(reasons)) from None
    assert isinstance(spec, ErrorFault | LatencyFault | HangFault | CpuFault | MemoryFault)
    return spec


class _CpuBurner:
    """Burns ``share`` of a core in a daemon thread (hashing releases the GIL)."""

    PERIOD_S: Final = 0.1
    _CHUNK: Final = b"\xa5" * 65536

    def __init__(self, share: float) -> None:
        self.share = share
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="testbed-cpu-fault", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        busy_s = self.share * self.PERIOD_S
        while not self._stop.is_set():
            period_start = time.monotonic()
            while time.monotonic() - period_start < busy_s:
                hashlib.sha256(self._CHUNK).digest()
            rest = self.PERIOD_S - (time.monotonic() - period_start)
            if rest > 0:
                self._stop.wait(rest)


class _MemoryLeak:
    """Holds ever more filled memory, ``mb_per_s`` up to ``max_mb``."""

    TICK_S: Final = 0.1

    def __init__(self, spec: MemoryFault) -> None:
        self.spec = spec
        self.held: list[bytearray] = []
        self.held_bytes = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.held.clear()
        self.held_bytes = 0

    async def _run(self) -> None:
        cap = self.spec.max_mb * 1024 * 1024
        per_tick = max(1, int(self.spec.mb_per_s * 1024 * 1024 * self.TICK_S))
        while self.held_bytes < cap:
            size = min(per_tick, cap - self.held_bytes)
            self.held.append(bytearray(b"\xa5") * size)
            self.held_bytes += size
            await asyncio.sleep(self.TICK_S)


@dataclass
class ActiveFault:
    """One fault that is switched on."""

    spec: FaultSpec
    started_at: float
    """Wall-clock start (Unix seconds)."""
    expires_at: float | None
    """Monotonic time at which it switches off, or None."""
    cleared: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    worker: _CpuBurner | _MemoryLeak | None = None

    def describe(self) -> dict[str, Any]:
        remaining = (
            None if self.expires_at is None else max(0.0, self.expires_at - time.monotonic())
        )
        out: dict[str, Any] = {
            "kind": self.spec.kind,
            "spec": self.spec.model_dump(mode="json", exclude={"kind"}),
            "started_at": self.started_at,
            "expires_in_s": None if remaining is None else round(remaining, 3),
        }
        if isinstance(self.worker, _MemoryLeak):
            out["held_mb"] = round(self.worker.held_bytes / (1024 * 1024), 1)
        return out


class FaultController:
    """The faults active in one process, and the metrics about them."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        error_shape: ErrorShape = RPC_ERRORS,
    ) -> None:
        self._error_shape = error_shape  # of the error answers it injects
        self._rng = rng or random.Random()
        self._clock = clock
        self._active: dict[str, ActiveFault] = {}
        self._active_gauge = Gauge(
            "testbed_faults_active",
            "In-service faults switched on (1) or off (0), by kind.",
            ["kind"],
            registry=registry,
        )
        self._injected = Counter(
            "testbed_faults_injected_total",
            "Requests an in-service fault was applied to, by kind.",
            ["kind"],
            registry=registry,
        )
        for kind in FAULT_KINDS:
            self._active_gauge.labels(kind).set(0)
            self._injected.labels(kind)

    # -- control -------------------------------------------------------------------------------

    def set(self, spec: FaultSpec) -> ActiveFault:
        """Switch a fault on (replacing one of the same kind). Call on the event loop."""
        self.clear(spec.kind)
        loop = asyncio.get_running_loop()
        active = ActiveFault(
            spec=spec,
            started_at=self._clock(),
            expires_at=None if spec.duration_s is None else time.monotonic() + spec.duration_s,
        )
        if isinstance(spec, CpuFault):
            active.worker = _CpuBurner(spec.share)
        elif isinstance(spec, MemoryFault):
            active.worker = _MemoryLeak(spec)
        if active.worker is not None:
            active.worker.start()
        if spec.duration_s is not None:
            active.timer = loop.call_later(spec.duration_s, self._expire, active)
        self._active[spec.kind] = active
        self._active_gauge.labels(spec.kind).set(1)
        _log.info("fault_set", kind=spec.kind, **spec.model_dump(mode="json", exclude={"kind"}))
        return active

    def clear(self, kind: str) -> bool:
        """Switch one kind off; False if it was not on."""
        active = self._active.pop(kind, None)
        if active is None:
            return False
        if active.timer is not None:
            active.timer.cancel()
        if active.worker is not None:
            active.worker.stop()
        active.cleared.set()
        self._active_gauge.labels(kind).set(0)
        _log.info("fault_cleared", kind=kind)
        return True

    def clear_all(self) -> int:
        """Switch every fault off; returns how many were on."""
        return sum(self.clear(kind) for kind in list(self._active))

    def _expire(self, active: ActiveFault) -> None:
        if self._active.get(active.spec.kind) is active:
            _log.info("fault_expired", kind=active.spec.kind)
            self.clear(active.spec.kind)

    def active(self) -> list[ActiveFault]:
        return list(self._active.values())

    def get(self, kind: str) -> ActiveFault | None:
        return self._active.get(kind)

    # -- applying to requests -----------------------------------------------------------------

    def _hit(self, kind: str, route: str) -> ActiveFault | None:
        active = self._active.get(kind)
        if active is None:
            return None
        spec = active.spec
        assert isinstance(spec, _RequestFault)
        if not spec.applies_to(route):
            return None
        if spec.rate < 1.0 and self._rng.random() >= spec.rate:
            return None
        self._injected.labels(kind).inc()
        return active

    @property
    def any_active(self) -> bool:
        """Whether any fault is active in this process."""
        return bool(self._active)

    async def apply(self, request: web.Request, route: str) -> web.StreamResponse | None:
        """Apply request faults; an answer to send instead of running the handler, or None."""
        if not self._active:
            return None
        applied: list[str] = []
        try:
            latency = self._hit("latency", route)
            if latency is not None:
                applied.append("latency")
                assert isinstance(latency.spec, LatencyFault)
                await asyncio.sleep(latency.spec.delay_s(self._rng))
            hang = self._hit("hang", route)
            if hang is not None:
                applied.append("hang")
                if not await _hang(request, hang.cleared):
                    return web.Response(status=CLIENT_CLOSED)
            error = self._hit("error", route)
            if error is not None:
                applied.append("error")
                spec = error.spec
                assert isinstance(spec, ErrorFault)
                assert spec.status is not None
                return self._error_shape.answer(spec.status, spec.message, code=spec.code)
            return None
        finally:
            if applied:
                request[FAULT_KEY] = "+".join(applied)

    async def close(self) -> None:
        """Stop every fault (threads, timers, held memory)."""
        self.clear_all()


async def _hang(request: web.Request, cleared: asyncio.Event, poll_s: float = 0.25) -> bool:
    """Wait until the fault is cleared (True) or the client has gone away (False)."""
    while not cleared.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
        try:
            async with asyncio.timeout(poll_s):
                await cleared.wait()
        except TimeoutError:
            continue
    return True


def make_fault_middleware(faults: FaultController) -> Middleware:
    """Applies request faults to every route except health and metrics."""

    @web.middleware
    async def fault_injection(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_template(request)
        if route not in QUIET_ROUTES:
            answer = await faults.apply(request, route)
            if answer is not None:
                return answer
        return await handler(request)

    return fault_injection
