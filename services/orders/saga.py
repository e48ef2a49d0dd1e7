"""The checkout saga as a pure state machine: which action each step calls for, where each
outcome leads. No I/O here; ``checkout.py`` performs the actions and stores every step.

Steps (stored durably after each transition)::

    started ──reserve ok──► reserved ──charge ok──► charged ──commit ok──► confirmed
       │                       │                       │
       └─ refused/uncertain ───┴─ refused/uncertain ───┴─ refused ──► compensating ──ok──► failed

* ``uncertain`` means the outcome is unknown (timeout, connection lost, service down). Before
  the charge is known to have succeeded the saga gives up and compensates — the compensations
  are idempotent and also cancel a request that might still arrive late (a released tombstone in
  inventory, a voided charge key in payments). Once charged, it only moves forward: an uncertain
  commit is retried (by the recovery loop) until it succeeds or is refused.
* ``compensating`` releases the reservation and refunds the charge; it stays there (retried by
  recovery) until both succeed.
* In ``naive`` mode there is no compensation: any failure marks the order failed at once, and
  nothing retries or recovers.
"""

from __future__ import annotations

from enum import StrEnum

from services.common.consistency import Consistency
from services.orders.api import OrderStatus


class Step(StrEnum):
    STARTED = "started"
    RESERVED = "reserved"
    CHARGED = "charged"
    CONFIRMED = "confirmed"
    COMPENSATING = "compensating"
    FAILED = "failed"


class Action(StrEnum):
    RESERVE = "reserve"
    CHARGE = "charge"
    COMMIT = "commit"
    COMPENSATE = "compensate"


class Outcome(StrEnum):
    OK = "ok"
    REFUSED = "refused"  # a definite no: out of stock, declined, reservation expired
    UNCERTAIN = "uncertain"  # unknown: timeout, connection lost, upstream down


TERMINAL = frozenset({Step.CONFIRMED, Step.FAILED})

_ACTIONS = {
    Step.STARTED: Action.RESERVE,
    Step.RESERVED: Action.CHARGE,
    Step.CHARGED: Action.COMMIT,
    Step.COMPENSATING: Action.COMPENSATE,
}
_FORWARD = {
    Step.STARTED: Step.RESERVED,
    Step.RESERVED: Step.CHARGED,
    Step.CHARGED: Step.CONFIRMED,
    Step.COMPENSATING: Step.FAILED,
}


def status_of(step: Step) -> OrderStatus:
    """The order status a customer sees for a saga step."""
    if step is Step.CONFIRMED:
        return OrderStatus.CONFIRMED
    if step is Step.FAILED:
        return OrderStatus.FAILED
    return OrderStatus.PENDING


def next_action(step: Step) -> Action | None:
    """What to do at ``step``; None when the saga is over."""
    return _ACTIONS.get(step)


def transition(step: Step, outcome: Outcome, mode: Consistency) -> Step:
    """Where the saga goes from ``step`` after its action ended with ``outcome``.

    Returning ``step`` itself means: stay, and let the recovery loop try the action again.
    """
    if step in TERMINAL:
        raise ValueError(f"the saga is over at step {step.value!r}")
    if outcome is Outcome.OK:
        return _FORWARD[step]
    if mode is Consistency.NAIVE:
        return Step.FAILED
    if step is Step.COMPENSATING:
        return Step.COMPENSATING
    if step is Step.CHARGED and outcome is Outcome.UNCERTAIN:
        return Step.CHARGED
    return Step.COMPENSATING
