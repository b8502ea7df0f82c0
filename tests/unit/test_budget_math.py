"""Budget rules without a database: scopes, the refusal message, thresholds, periods."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wflo_jupyter.core.budget import (
    THRESHOLDS,
    BudgetExceeded,
    BudgetNotFound,
    BudgetScope,
    BudgetState,
    crossed_thresholds,
    describe_call,
    fits,
    headroom,
    needs_reset,
    period_start,
    reached_thresholds,
    rearm_thresholds,
    thresholds_from_mask,
    thresholds_mask,
)
from wflo_jupyter.core.errors import WfloError


def test_refusal_reads_exactly_like_the_design() -> None:
    refusal = BudgetExceeded(
        scope=BudgetScope("notebook", "session-1"),
        limit_micros=500_000,
        spent_micros=410_000,
        reserved_micros=50_000,
        needed_micros=60_000,
        call_label=describe_call("gpt-4o-mini", 800),
    )
    assert isinstance(refusal, WfloError)
    assert f"BudgetExceeded: {refusal}" == (
        "BudgetExceeded: notebook budget $0.50 — spent $0.41, reserved $0.05, "
        "this call needs up to $0.06 (gpt-4o-mini, max_tokens=800)"
    )


def test_refusal_names_team_budgets_and_exact_sub_cent_amounts() -> None:
    refusal = BudgetExceeded(
        scope=BudgetScope("team", "research"),
        limit_micros=5_000_000,
        spent_micros=4_999_990,
        reserved_micros=0,
        needed_micros=12_345,
        call_label="claude-haiku-4-5",
    )
    assert str(refusal) == (
        "team research budget $5.00 — spent $4.99999, reserved $0.00, "
        "this call needs up to $0.012345 (claude-haiku-4-5)"
    )
    assert str(refusal) == str(pickle.loads(pickle.dumps(refusal)))  # crosses processes


def test_scopes() -> None:
    assert BudgetScope("cell", "abc").name == "cell"
    assert BudgetScope("team", "ml").name == "team ml"
    assert str(BudgetScope("team", "ml")) == "team:ml"
    with pytest.raises(ValueError, match="one of"):
        BudgetScope("org", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-255"):
        BudgetScope("team", "")
    assert "no team budget 'ml'" in str(BudgetNotFound(BudgetScope("team", "ml")))


def test_fits_and_headroom() -> None:
    assert fits(100, 40, 50, 10)
    assert not fits(100, 40, 50, 11)
    assert fits(0, 0, 0, 0)
    assert headroom(100, 40, 50) == 10
    assert headroom(100, 140, 0) == 0  # over the limit (a late settle): nothing left
    state = BudgetState(BudgetScope("cell", "s"), 100, 40, 50)
    assert state.available_micros == 10
    assert str(state) == "cell budget $0.0001: spent $0.00004, reserved $0.00005"


@pytest.mark.parametrize(
    ("limit", "before", "after", "emitted", "expected"),
    [
        (1000, 0, 499, (), []),
        (1000, 0, 500, (), [50]),
        (1000, 400, 950, (), [50, 75, 90]),  # one big move announces each once
        (1000, 400, 950, (50,), [75, 90]),
        (1000, 900, 1000, (50, 75, 90), [100]),
        (1000, 1000, 2000, (50, 75, 90, 100), []),  # never twice
        (1000, 800, 700, (), []),  # spending that went down crosses nothing
        (1000, 950, 950, (), [50, 75, 90]),  # a lowered limit: catch up at once
        (0, 0, 0, (), []),
        (0, 0, 1, (), [50, 75, 90, 100]),
        (3, 0, 2, (), [50]),  # 2/3 = 66.7%: exact integer arithmetic, no rounding
        (3, 0, 3, 0b0001, [75, 90, 100]),  # emitted given as the stored bitmask
    ],
)
def test_crossed_thresholds(
    limit: int, before: int, after: int, emitted: tuple[int, ...] | int, expected: list[int]
) -> None:
    assert crossed_thresholds(limit, before, after, emitted) == expected


def test_threshold_masks() -> None:
    assert thresholds_mask([]) == 0
    assert thresholds_mask([50, 100]) == 0b1001
    assert thresholds_from_mask(0b1001) == (50, 100)
    assert thresholds_from_mask(thresholds_mask(THRESHOLDS)) == THRESHOLDS
    with pytest.raises(ValueError, match="not a budget threshold"):
        thresholds_mask([60])
    # raising the limit from 1000 to 2000 at spent 800 forgets 50 (no longer reached at
    # 40%)... and 75, so crossing them again is announced again
    assert rearm_thresholds(2000, 800, thresholds_mask([50, 75])) == 0
    assert rearm_thresholds(2000, 1000, thresholds_mask([50, 75])) == thresholds_mask([50])


@given(
    limit=st.integers(0, 10**12),
    steps=st.lists(st.integers(0, 10**11), max_size=30),
)
def test_every_threshold_is_announced_exactly_once(limit: int, steps: list[int]) -> None:
    spent, mask, announced = 0, 0, []
    for amount in steps:
        new = crossed_thresholds(limit, spent, spent + amount, mask)
        spent += amount
        mask |= thresholds_mask(new)
        announced.extend(new)
    assert announced == sorted(set(announced))
    assert set(announced) == set(reached_thresholds(limit, spent))


def test_periods() -> None:
    now = datetime(2026, 3, 15, 13, 45, tzinfo=UTC)
    assert period_start("none", now) is None
    assert period_start("day", now) == datetime(2026, 3, 15, tzinfo=UTC)
    assert period_start("month", now) == datetime(2026, 3, 1, tzinfo=UTC)
    # periods are UTC: 23:30 on the 31st in UTC-5 is already the 1st of April in UTC
    late = datetime(2026, 3, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert period_start("month", late) == datetime(2026, 4, 1, tzinfo=UTC)
    assert not needs_reset("none", None, now)
    assert needs_reset("day", None, now)
    assert needs_reset("day", datetime(2026, 3, 14, tzinfo=UTC), now)
    assert not needs_reset("day", datetime(2026, 3, 15, tzinfo=UTC), now)
    assert not needs_reset("month", datetime(2026, 3, 1, tzinfo=UTC), now)
    assert needs_reset("month", datetime(2026, 2, 1, tzinfo=UTC), now)
    with pytest.raises(ValueError, match="period"):
        period_start("week", now)
    with pytest.raises(ValueError, match="aware"):
        period_start("day", datetime(2026, 1, 1))


def test_describe_call() -> None:
    assert describe_call("gpt-4o-mini", 800) == "gpt-4o-mini, max_tokens=800"
    assert describe_call("gpt-4o-mini") == "gpt-4o-mini"
