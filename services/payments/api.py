"""Payments' RPC surface: service name, method paths and request/response models.

Charge and Refund are idempotent by the ``Idempotency-Key`` request header: the same key with
the same body answers the first result again; the same key with a different body is refused.
A declined charge is an answer (``state == "declined"``), not an error.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field, model_validator

from services.common.types import AmountCents, Currency, OrderId

SERVICE = "testbed.payments.v1.PaymentService"
CHARGE = f"{SERVICE}/Charge"
REFUND = f"{SERVICE}/Refund"
AUDIT = f"{SERVICE}/Audit"


class ChargeState(StrEnum):
    PENDING = "pending"  # recorded, the provider has not answered yet
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    REFUNDED = "refunded"
    VOIDED = "voided"  # a refund arrived before the charge: the charge will never happen


class ChargeRequest(BaseModel):
    order_id: OrderId
    amount_cents: AmountCents
    currency: Currency = "USD"


class Charge(BaseModel):
    charge_id: str
    order_id: str
    amount_cents: int
    currency: str
    state: ChargeState
    idempotency_key: str | None = None
    decline_reason: str = ""
    created_at: float
    updated_at: float


class ChargeResponse(BaseModel):
    charge: Charge


class RefundRequest(BaseModel):
    """Refund one charge in full, named by its id or by the idempotency key it was made with.

    Refunding by key works even when the charge's answer was lost (or the charge never arrived:
    then the key is voided, so a late Charge with it is refused instead of taking money).
    """

    order_id: OrderId
    charge_id: str | None = Field(default=None, max_length=64)
    charge_key: str | None = Field(default=None, max_length=200)
    reason: str = Field(default="", max_length=200)

    @model_validator(mode="after")
    def _one_reference(self) -> RefundRequest:
        if (self.charge_id is None) == (self.charge_key is None):
            raise ValueError("name the charge to refund by exactly one of charge_id or charge_key")
        return self


class Refund(BaseModel):
    refund_id: str
    order_id: str
    charge_id: str
    amount_cents: int
    idempotency_key: str | None = None
    reason: str = ""
    created_at: float


class RefundResponse(BaseModel):
    refund: Refund
    charge: Charge


class AuditRequest(BaseModel):
    pass


class LedgerEntry(BaseModel):
    entry_id: int
    order_id: str
    kind: str  # "charge" (positive amount) or "refund" (negative amount)
    amount_cents: int
    ref_id: str
    created_at: float


class PaymentsAudit(BaseModel):
    """A consistent snapshot of payments: charges, refunds and the ledger of money moved."""

    service: str = "payments"
    taken_at: float
    charges: list[Charge]
    refunds: list[Refund]
    ledger: list[LedgerEntry]
