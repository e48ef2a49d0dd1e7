"""The client side of RPC: ``RpcClient`` calls one upstream service under a resilience profile.

Per call: the deadline (the caller's own, capped by the one inherited from the request being
handled), a bulkhead slot, then attempts. Per attempt: the circuit breaker's permission, an
instance from the balancer (skipping ejected and already-tried ones), one OpenTelemetry CLIENT
span with W3C trace context injected, the POST. Failures feed the breaker and outlier ejection;
retries (tenacity: exponential backoff with full jitter) happen only when safe (idempotent, an
idempotency key, or a connect failure that never reached the server), only for retry-safe
codes, only within the deadline and the retry budget. Every call is counted in the
``rpc_client_*`` metrics of the registry passed in.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import structlog
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, TypeAdapter, ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from mesh.balancing import Balancer
from mesh.codes import (
    UPSTREAM_FAILURE_CODES,
    Code,
    RpcError,
    code_from_http_status,
    describe_validation_error,
)
from mesh.deadlines import TIMEOUT_HEADER, current_deadline
from mesh.discovery import Discovery, Instance
from mesh.errors import BulkheadFullError, CircuitOpenError, NoInstanceError
from mesh.local import TRANSPORT_ATTRIBUTE, LocalEndpoint
from mesh.resilience import (
    NO_DEADLINE_CAP,
    Bulkhead,
    CircuitBreaker,
    ResilienceProfile,
    RetryBudget,
    RetryPolicy,
)
from mesh.server import IDEMPOTENCY_HEADER

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

PROTOCOL_HEADER = "Connect-Protocol-Version"

_log = structlog.get_logger("mesh.client")


def new_idempotency_key() -> str:
    """A fresh random idempotency key (callers that can, derive one from their own ids)."""
    return uuid.uuid4().hex


class RpcClientMetrics:
    """The ``rpc_client_*`` metrics of one registry (shared by every client using it)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "rpc_client_calls_total",
            "RPC calls made, by upstream service, method and final code",
            ["upstream", "method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "rpc_client_duration_seconds",
            "Duration of RPC calls including retries",
            ["upstream", "method"],
            registry=registry,
        )
        self.retries = Counter(
            "rpc_client_retries_total",
            "RPC attempts beyond the first",
            ["upstream", "method"],
            registry=registry,
        )
        self.breaker_state = Gauge(
            "rpc_client_breaker_state",
            "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open",
            ["upstream"],
            registry=registry,
        )
        self.ejections = Counter(
            "rpc_client_ejections_total",
            "Instances ejected by passive outlier detection",
            ["upstream"],
            registry=registry,
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> RpcClientMetrics:
        """The metrics of ``registry``, created on first use (a registry accepts a name once)."""
        metrics = _METRICS_BY_REGISTRY.get(registry)
        if metrics is None:
            metrics = _METRICS_BY_REGISTRY[registry] = cls(registry)
        return metrics


# Not a singleton: a weak cache so that clients sharing one (passed-in) registry share its
# metric objects; it holds nothing once the registry is gone.
_METRICS_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, RpcClientMetrics] = (
    weakref.WeakKeyDictionary()
)


# -- client ---------------------------------------------------------------------------------


class _AttemptFailed(Exception):
    """One attempt failed; ``retryable`` says whether trying again may help and is safe."""

    def __init__(self, error: RpcError, *, retryable: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.retryable = retryable


@dataclass
class _Call:
    method_path: str
    rpc_service: str
    method: str
    payload: bytes
    deadline: float | None
    retry_safe: bool
    idempotency_key: str | None
    hash_key: str | None
    tried: list[Instance] = field(default_factory=list)


class RpcClient:
    """Calls one upstream service with the protections of a ``ResilienceProfile``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        discovery: Discovery,
        service: str,
        *,
        profile: ResilienceProfile,
        policy: str = "round_robin",
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        caller: str = "",
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        local: LocalEndpoint | None = None,
    ) -> None:
        self.session = session
        # Set: the upstream lives in this process; attempts call it directly (mesh.local).
        self.local = local
        self.discovery = discovery
        self.service = service
        self.profile = profile
        self.caller = caller
        self._sleep = sleep
        self._metrics = RpcClientMetrics.for_registry(registry) if registry is not None else None
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self._tracer = provider.get_tracer("mesh.rpc")
        self.balancer = Balancer(
            policy, outlier=profile.outlier, clock=clock, on_eject=self._on_eject
        )
        self.breaker = (
            CircuitBreaker(profile.breaker, clock=clock, on_change=self._on_breaker_change)
            if profile.breaker
            else None
        )
        self.budget = RetryBudget(profile.budget, clock=clock) if profile.budget else None
        self.bulkhead = Bulkhead(profile.bulkhead) if profile.bulkhead else None
        if self._metrics is not None:
            breaker = self.breaker
            gauge = self._metrics.breaker_state.labels(service)
            gauge.set_function(lambda: float(breaker.peek_state()) if breaker else 0.0)
            # Start the ejection counter at 0, so the first ejection is an increase that
            # Prometheus' increase()/rate() can see (a series born at 1 shows no increase).
            self._metrics.ejections.labels(service)

    # -- public --------------------------------------------------------------------------

    async def call(
        self,
        method_path: str,
        request: BaseModel | Mapping[str, Any],
        response_type: type[T],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline sent on the wire, too
        idempotency_key: str | None = None,
        idempotent: bool = False,
        hash_key: str | None = None,
    ) -> T:
        """Call ``package.Service/Method``; raises ``RpcError`` on failure."""
        result, _ = await self.call_with_headers(
            method_path,
            request,
            response_type,
            timeout=timeout,
            idempotency_key=idempotency_key,
            idempotent=idempotent,
            hash_key=hash_key,
        )
        return result

    async def call_with_headers(
        self,
        method_path: str,
        request: BaseModel | Mapping[str, Any],
        response_type: type[T],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline sent on the wire, too
        idempotency_key: str | None = None,
        idempotent: bool = False,
        hash_key: str | None = None,
    ) -> tuple[T, Mapping[str, str]]:
        """Like ``call`` and also returns the answer's headers (e.g. Cache-Control, ETag)."""
        rpc_service, slash, method = method_path.partition("/")
        if not slash or not rpc_service or not method or "/" in method:
            raise ValueError(f"method path {method_path!r} is not 'package.Service/Method'")
        payload = (
            request.model_dump_json().encode()
            if isinstance(request, BaseModel)
            else json.dumps(dict(request)).encode()
        )
        call = _Call(
            method_path=method_path,
            rpc_service=rpc_service,
            method=method,
            payload=payload,
            deadline=self._deadline(timeout),
            retry_safe=idempotent or idempotency_key is not None,
            idempotency_key=idempotency_key,
            hash_key=hash_key,
        )
        started = time.monotonic()
        code = "ok"
        try:
            if self.bulkhead is None:
                body, headers = await self._call_with_retries(call)
            else:
                try:
                    async with self.bulkhead.slot():
                        body, headers = await self._call_with_retries(call)
                except BulkheadFullError as e:
                    raise RpcError(
                        Code.RESOURCE_EXHAUSTED, f"bulkhead towards {self.service}: {e}"
                    ) from None
            try:
                result = _decode(body, response_type)
            except ValidationError as e:
                raise RpcError(
                    Code.INTERNAL,
                    describe_validation_error(
                        f"{method_path}: invalid response from {self.service}", e
                    ),
                ) from None
            return result, headers
        except RpcError as e:
            code = e.code.value
            raise
        except asyncio.CancelledError:
            code = Code.CANCELED.value
            raise
        finally:
            if self._metrics is not None:
                self._metrics.calls.labels(self.service, method, code).inc()
                self._metrics.duration.labels(self.service, method).observe(
                    time.monotonic() - started
                )

    # -- internals -----------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        if not self.profile.deadlines:
            return None
        now = time.monotonic()
        inherited = current_deadline()
        seconds = timeout if timeout is not None else self.profile.timeout
        own = None if seconds is None else now + seconds
        candidates = [d for d in (inherited, own) if d is not None]
        return min(candidates) if candidates else None

    async def _call_with_retries(self, call: _Call) -> tuple[bytes, Mapping[str, str]]:
        policy = self.profile.retry
        if self.budget is not None:
            self.budget.record_request()
        if policy is None:
            try:
                return await self._attempt(call, 0, None)
            except _AttemptFailed as failed:
                raise failed.error from None
        retrying = AsyncRetrying(
            stop=self._stopper(call, policy),
            wait=wait_random_exponential(multiplier=policy.backoff_base, max=policy.backoff_max),
            retry=retry_if_exception(lambda e: isinstance(e, _AttemptFailed) and e.retryable),
            before_sleep=self._before_retry(call),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(
                        call, attempt.retry_state.attempt_number - 1, policy.per_try_timeout
                    )
        except _AttemptFailed as failed:
            raise failed.error from None
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _stopper(self, call: _Call, policy: RetryPolicy) -> Callable[[RetryCallState], bool]:
        def stop(state: RetryCallState) -> bool:
            if state.attempt_number > policy.max_retries:
                return True
            # Not worth a retry that could only start after the deadline.
            if (
                call.deadline is not None
                and call.deadline - time.monotonic() <= state.upcoming_sleep
            ):
                return True
            return self.budget is not None and not self.budget.try_acquire()

        return stop

    def _before_retry(self, call: _Call) -> Callable[[RetryCallState], None]:
        def before(state: RetryCallState) -> None:
            if self._metrics is not None:
                self._metrics.retries.labels(self.service, call.method).inc()
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            _log.debug(
                "rpc_retry",
                upstream=self.service,
                method=call.method_path,
                attempt=state.attempt_number,
                sleep=round(state.upcoming_sleep, 4),
                error=str(error),
            )

        return before

    async def _attempt(
        self, call: _Call, attempt: int, per_try_timeout: float | None
    ) -> tuple[bytes, Mapping[str, str]]:
        now = time.monotonic()
        if call.deadline is not None and call.deadline <= now:
            raise _AttemptFailed(
                RpcError(Code.DEADLINE_EXCEEDED, f"{call.method_path}: deadline expired"),
                retryable=False,
            )
        if self.breaker is not None:
            try:
                self.breaker.acquire()
            except CircuitOpenError as e:
                raise _AttemptFailed(
                    RpcError(Code.UNAVAILABLE, f"{self.service}: {e}"), retryable=False
                ) from None
        try:
            instance = self.balancer.pick(
                self.discovery.instances(self.service), key=call.hash_key, exclude=call.tried
            )
        except NoInstanceError:
            if self.breaker is not None:
                self.breaker.release()
            raise _AttemptFailed(
                RpcError(Code.UNAVAILABLE, f"no instance of {self.service} is known"),
                retryable=False,
            ) from None
        call.tried.append(instance)
        attempt_deadline = call.deadline
        if per_try_timeout is not None and call.retry_safe:
            per_try = now + per_try_timeout
            attempt_deadline = (
                per_try if attempt_deadline is None else min(attempt_deadline, per_try)
            )
        verdict: bool | None = None  # True: healthy answer, False: upstream failure
        try:
            body, headers = await self._send(call, instance, attempt, attempt_deadline)
            verdict = True
            return body, headers
        except _AttemptFailed as failed:
            # Other codes: the upstream answered; the request was at fault.
            verdict = failed.error.code not in UPSTREAM_FAILURE_CODES
            raise
        finally:
            if verdict is True:
                self.balancer.record_success(instance)
                if self.breaker is not None:
                    self.breaker.record_success()
            elif verdict is False:
                self.balancer.record_failure(instance)
                if self.breaker is not None:
                    self.breaker.record_failure()
            elif self.breaker is not None:
                self.breaker.release()

    async def _send(
        self, call: _Call, instance: Instance, attempt: int, deadline: float | None
    ) -> tuple[bytes, Mapping[str, str]]:
        seconds = NO_DEADLINE_CAP if deadline is None else max(deadline - time.monotonic(), 0.001)
        attributes: dict[str, str | int] = {
            "rpc.system": "connect_rpc",
            "rpc.service": call.rpc_service,
            "rpc.method": call.method,
            "server.address": instance.host,
            "server.port": instance.port,
            "testbed.rpc.upstream": self.service,
            "testbed.rpc.instance": instance.id,
        }
        if self.caller:
            attributes["testbed.rpc.caller"] = self.caller
        if attempt:
            attributes["http.request.resend_count"] = attempt
        if self.local is not None:
            return await self._send_local(call, instance, deadline, attributes)
        with self._tracer.start_as_current_span(
            call.method_path,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            headers = {"Content-Type": "application/json", PROTOCOL_HEADER: "1"}
            if deadline is not None:
                headers[TIMEOUT_HEADER] = str(max(1, math.floor(seconds * 1000)))
            if call.idempotency_key is not None:
                headers[IDEMPOTENCY_HEADER] = call.idempotency_key
            propagate.inject(headers)
            span_trace_id = trace.format_trace_id(span.get_span_context().trace_id)
            self.balancer.begin(instance)
            try:
                async with self.session.post(
                    f"{instance.base_url}/{call.method_path}",
                    data=call.payload,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=seconds),
                ) as resp:
                    status = resp.status
                    body = await resp.read()
                    resp_headers: Mapping[str, str] = CIMultiDictProxy(CIMultiDict(resp.headers))
            except TimeoutError:
                overall = deadline is not None and deadline == call.deadline
                what = "deadline" if overall else "per-try timeout"
                error = RpcError(
                    Code.DEADLINE_EXCEEDED,
                    f"{call.method_path}: {what} exceeded waiting for {instance.address}",
                    trace_id=span_trace_id,
                )
                _fail_span(span, error, "timeout")
                raise _AttemptFailed(error, retryable=call.retry_safe and not overall) from None
            except aiohttp.ClientConnectorError as e:
                error = RpcError(
                    Code.UNAVAILABLE,
                    f"{call.method_path}: cannot connect to {instance.address} ({e.os_error})",
                    trace_id=span_trace_id,
                )
                _fail_span(span, error, type(e).__name__)
                # Never sent, so always safe to try another instance.
                raise _AttemptFailed(error, retryable=True) from None
            except aiohttp.ClientError as e:
                error = RpcError(
                    Code.UNAVAILABLE,
                    f"{call.method_path}: {instance.address} failed mid-call ({type(e).__name__})",
                    trace_id=span_trace_id,
                )
                _fail_span(span, error, type(e).__name__)
                raise _AttemptFailed(error, retryable=call.retry_safe) from None
            finally:
                self.balancer.end(instance)
            span.set_attribute("http.response.status_code", status)
            if status == 200:
                return body, resp_headers
            error = _error_from_answer(status, body, instance, span_trace_id)
            _fail_span(span, error, error.code.value)
            policy = self.profile.retry
            retryable = (
                call.retry_safe and policy is not None and error.code.value in policy.retry_on
            )
            raise _AttemptFailed(error, retryable=retryable)

    async def _send_local(
        self,
        call: _Call,
        instance: Instance,
        deadline: float | None,
        attributes: dict[str, str | int],
    ) -> tuple[bytes, Mapping[str, str]]:
        """One attempt through the in-process transport: the callee's handler runs in this
        task, under the attempt's deadline, with the idempotency key; its ``RpcError`` is
        treated exactly like an error answer over HTTP."""
        local = self.local
        assert local is not None
        attributes[TRANSPORT_ATTRIBUTE] = "inproc"
        with self._tracer.start_as_current_span(
            call.method_path,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            span_trace_id = trace.format_trace_id(span.get_span_context().trace_id)
            self.balancer.begin(instance)
            try:
                with self._tracer.start_as_current_span(
                    call.method_path,
                    kind=SpanKind.SERVER,
                    attributes={
                        "rpc.system": "connect_rpc",
                        "rpc.service": call.rpc_service,
                        "rpc.method": call.method,
                        TRANSPORT_ATTRIBUTE: "inproc",
                        "testbed.service": local.service,
                    },
                    record_exception=False,
                    set_status_on_exception=False,
                ) as server_span:
                    try:
                        return await local.rpc.invoke_local(
                            call.method,
                            call.payload,
                            app=local.app,
                            deadline=deadline,
                            idempotency_key=call.idempotency_key,
                        )
                    except RpcError as error:
                        if error.trace_id is None:
                            error.trace_id = span_trace_id
                        _fail_span(server_span, error, error.code.value)
                        raise
            except RpcError as error:
                _fail_span(span, error, error.code.value)
                policy = self.profile.retry
                retryable = (
                    call.retry_safe and policy is not None and error.code.value in policy.retry_on
                )
                raise _AttemptFailed(error, retryable=retryable) from None
            finally:
                self.balancer.end(instance)

    def _on_eject(self, instance: Instance, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.ejections.labels(self.service).inc()
        _log.warning(
            "instance_ejected", upstream=self.service, instance=instance.id, seconds=seconds
        )

    def _on_breaker_change(self, old: object, new: object) -> None:
        _log.warning("breaker_state_changed", upstream=self.service, old=str(old), new=str(new))


def _fail_span(span: trace.Span, error: RpcError, error_type: str) -> None:
    span.set_attribute("error.type", error_type)
    span.set_attribute("rpc.connect_rpc.error_code", error.code.value)
    span.set_status(Status(StatusCode.ERROR, error.message))


def _error_from_answer(status: int, body: bytes, instance: Instance, trace_id: str) -> RpcError:
    try:
        data = json.loads(body)
        code = Code(data["code"])
        message = str(data.get("message", ""))
        details = data.get("details") if isinstance(data.get("details"), dict) else None
        return RpcError(code, message, details=details, trace_id=data.get("trace_id") or trace_id)
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode(errors="replace").strip()
        return RpcError(
            code_from_http_status(status),
            f"HTTP {status} from {instance.address}: {text or '(empty body)'}",
            trace_id=trace_id,
        )


def _decode(body: bytes, response_type: type[T]) -> T:
    if isinstance(response_type, type) and issubclass(response_type, BaseModel):
        return response_type.model_validate_json(body)
    return TypeAdapter(response_type).validate_json(body)
