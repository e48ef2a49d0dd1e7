"""Charging and refunding: the store, the simulated provider and the crash hook, free of HTTP.

A charge is recorded as pending, then the provider is asked, then its answer is recorded (and
the ledger written) — three steps so that a crash between them leaves a pending charge that
``resolve_pending`` finishes after restart (in ``saga`` mode). A charge still pending when it is
asked for again is resolved by asking the provider again: its answer depends only on the key, so
two instances racing on one charge agree, and the conditional update records it once.
"""

from __future__ import annotations

import asyncio
import time

from services.common.consistency import Consistency
from services.common.crash import CrashSwitch
from services.common.errors import InvalidArgument, Unavailable
from services.common.hashing import fingerprint
from services.payments.api import (
    Charge,
    ChargeRequest,
    ChargeState,
    RefundRequest,
    RefundResponse,
)
from services.payments.provider import PaymentProvider
from services.payments.store import PaymentsStore

CRASH_CHARGE_PENDING = "charge_pending"


class Payments:
    """The payments domain: idempotent charges and refunds over one store and one provider."""

    def __init__(
        self,
        store: PaymentsStore,
        provider: PaymentProvider,
        *,
        consistency: Consistency,
        crash: CrashSwitch,
    ) -> None:
        self.store = store
        self.provider = provider
        self.consistency = consistency
        self.crash = crash
        self._inflight: dict[str, asyncio.Future[Charge]] = {}

    def _require_key(self, key: str | None, method: str) -> None:
        if key is None and self.consistency is Consistency.SAGA:
            raise InvalidArgument(
                f"{method} needs an Idempotency-Key header (consistency mode 'saga');"
                " send one unique key per logical payment"
            )

    async def charge(self, request: ChargeRequest, *, key: str | None) -> Charge:
        self._require_key(key, "Charge")
        charge, created = await self.store.begin_charge(
            order_id=request.order_id,
            amount_cents=request.amount_cents,
            currency=request.currency,
            key=key,
            request_hash=fingerprint(request.model_dump(mode="json")),
        )
        if charge.state is not ChargeState.PENDING:
            return charge
        if created:
            self.crash.reached(CRASH_CHARGE_PENDING)
        return await self._resolve(charge)

    async def _resolve(self, charge: Charge) -> Charge:
        """Ask the provider about a pending charge and record the answer (once per process)."""
        running = self._inflight.get(charge.charge_id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Charge] = asyncio.get_running_loop().create_future()
        self._inflight[charge.charge_id] = future
        try:
            decision = await self.provider.authorize(charge.idempotency_key or charge.charge_id)
            result = await self.store.finish_charge(
                charge.charge_id, approved=decision.approved, decline_reason=decision.decline_reason
            )
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[charge.charge_id]

    async def refund(self, request: RefundRequest, *, key: str | None) -> RefundResponse:
        self._require_key(key, "Refund")
        request_hash = fingerprint(request.model_dump(mode="json"))
        for _ in range(3):
            outcome = await self.store.refund(
                order_id=request.order_id,
                charge_id=request.charge_id,
                charge_key=request.charge_key,
                reason=request.reason,
                key=key,
                request_hash=request_hash,
            )
            if isinstance(outcome, Charge):  # still pending: resolve it first, then refund
                await self._resolve(outcome)
                continue
            refund, charge = outcome
            return RefundResponse(refund=refund, charge=charge)
        raise Unavailable(
            "the charge to refund is still pending at the provider; try again shortly"
        )

    async def resolve_pending(self, *, older_than_seconds: float) -> int:
        """Finish charges a crash left pending (recovery, ``saga`` mode); returns how many."""
        pending = await self.store.pending_charges(older_than=time.time() - older_than_seconds)
        done = 0
        for charge in pending:
            if charge.charge_id in self._inflight:
                continue
            await self._resolve(charge)
            done += 1
        return done
