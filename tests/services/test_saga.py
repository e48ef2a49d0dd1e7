"""The saga state machine: every step's action and where each outcome leads, in both modes."""

from __future__ import annotations

import pytest

from services.common.consistency import Consistency
from services.orders.api import OrderStatus
from services.orders.saga import TERMINAL, Action, Outcome, Step, next_action, status_of, transition

SAGA, NAIVE = Consistency.SAGA, Consistency.NAIVE


def test_happy_path_reaches_confirmed() -> None:
    step = Step.STARTED
    actions = []
    while step not in TERMINAL:
        action = next_action(step)
        assert action is not None
        actions.append(action)
        step = transition(step, Outcome.OK, SAGA)
    assert step is Step.CONFIRMED
    assert actions == [Action.RESERVE, Action.CHARGE, Action.COMMIT]


@pytest.mark.parametrize("step", [Step.STARTED, Step.RESERVED])
@pytest.mark.parametrize("outcome", [Outcome.REFUSED, Outcome.UNCERTAIN])
def test_failure_before_the_charge_compensates(step: Step, outcome: Outcome) -> None:
    assert transition(step, outcome, SAGA) is Step.COMPENSATING


def test_once_charged_an_uncertain_commit_is_retried_not_compensated() -> None:
    assert transition(Step.CHARGED, Outcome.UNCERTAIN, SAGA) is Step.CHARGED
    assert transition(Step.CHARGED, Outcome.REFUSED, SAGA) is Step.COMPENSATING


def test_compensation_repeats_until_it_succeeds() -> None:
    assert next_action(Step.COMPENSATING) is Action.COMPENSATE
    assert transition(Step.COMPENSATING, Outcome.UNCERTAIN, SAGA) is Step.COMPENSATING
    assert transition(Step.COMPENSATING, Outcome.OK, SAGA) is Step.FAILED


@pytest.mark.parametrize("step", [Step.STARTED, Step.RESERVED, Step.CHARGED])
@pytest.mark.parametrize("outcome", [Outcome.REFUSED, Outcome.UNCERTAIN])
def test_naive_mode_fails_at_once_without_compensation(step: Step, outcome: Outcome) -> None:
    assert transition(step, outcome, NAIVE) is Step.FAILED


@pytest.mark.parametrize("step", sorted(TERMINAL))
def test_terminal_steps_have_no_action_and_no_transition(step: Step) -> None:
    assert next_action(step) is None
    with pytest.raises(ValueError, match="over"):
        transition(step, Outcome.OK, SAGA)


def test_status_seen_by_customers() -> None:
    assert status_of(Step.CONFIRMED) is OrderStatus.CONFIRMED
    assert status_of(Step.FAILED) is OrderStatus.FAILED
    for step in (Step.STARTED, Step.RESERVED, Step.CHARGED, Step.COMPENSATING):
        assert status_of(step) is OrderStatus.PENDING
