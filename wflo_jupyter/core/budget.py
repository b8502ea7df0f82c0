"""Budget scopes, reservation arithmetic, the ``BudgetExceeded`` refusal, threshold math
and budget periods.

Pure standard library. The SQL that applies these rules atomically is
``ledger.budgets``; this module decides *what* is allowed, never *how* it is stored.
The threshold and period rules have PL/pgSQL twins that the money moves run
(``wflo_reached_mask``, ``wflo_period_start``, ``wflo_period_rolled`` and the roll-over
inside ``wflo_reserve`` / ``wflo_finish``, created by the ledger's migrations);
``tests/integration/test_budget_truth.py`` checks that both agree.

A budget has a ``limit``; money against it is either ``spent`` (settled) or ``reserved``
(held for calls in flight). A new reservation of ``amount`` fits only when
``spent + reserved + amount <= limit``, for every budget that encloses the call
(its cell, its notebook, and each named team it is charged to).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.core.money import format_usd

ScopeKind = Literal["cell", "notebook", "team"]
Period = Literal["none", "day", "month"]
SCOPE_KINDS: tuple[ScopeKind, ...] = get_args(ScopeKind)
PERIODS: tuple[Period, ...] = get_args(Period)
#: Percentages of a budget's limit whose first crossing emits one ``budget.threshold`` event.
THRESHOLDS: tuple[int, ...] = (50, 75, 90, 100)


@dataclass(frozen=True, order=True)
class BudgetScope:
    """Which budget: ``cell`` (key: step id), ``notebook`` (key: session id or notebook
    path) or ``team`` (key: the team's name)."""

    kind: ScopeKind
    key: str

    def __post_init__(self) -> None:
        if self.kind not in SCOPE_KINDS:
            raise ValueError(f"budget scope must be one of {', '.join(SCOPE_KINDS)}: {self.kind!r}")
        if not self.key or len(self.key) > 255:
            raise ValueError(f"budget {self.kind} key must be 1-255 characters: {self.key!r}")

    @property
    def name(self) -> str:
        """How people read it: ``cell``, ``notebook``, ``team research``."""
        return scope_name(self.kind, self.key)

    def __str__(self) -> str:
        return f"{self.kind}:{self.key}"


def scope_name(kind: str, key: str) -> str:
    """``cell`` / ``notebook`` / ``team NAME``."""
    return f"team {key}" if kind == "team" else kind


def check_period(period: str) -> Period:
    if period not in PERIODS:
        raise ValueError(f"budget period must be one of {', '.join(PERIODS)}: {period!r}")
    return period


def check_limit(limit_micros: int) -> int:
    if isinstance(limit_micros, bool) or not isinstance(limit_micros, int):
        raise TypeError(f"a budget limit is integer micro-dollars, got {limit_micros!r}")
    if limit_micros < 0:
        raise ValueError(f"a budget cannot be negative: {limit_micros}")
    return limit_micros


def check_amount(amount_micros: int) -> int:
    if isinstance(amount_micros, bool) or not isinstance(amount_micros, int):
        raise TypeError(f"an amount is integer micro-dollars, got {amount_micros!r}")
    if amount_micros < 0:
        raise ValueError(f"an amount cannot be negative: {amount_micros}")
    return amount_micros


@dataclass(frozen=True)
class BudgetState:
    """A budget as last read: the numbers a meter shows."""

    scope: BudgetScope
    limit_micros: int
    spent_micros: int
    reserved_micros: int
    period: Period = "none"
    period_start: datetime | None = None
    thresholds_emitted: tuple[int, ...] = ()

    @property
    def available_micros(self) -> int:
        """What a new reservation may still take (never negative)."""
        return headroom(self.limit_micros, self.spent_micros, self.reserved_micros)

    @property
    def percent_spent(self) -> float:
        """For display only (money itself never goes through a float)."""
        if self.limit_micros <= 0:
            return 100.0 if self.spent_micros > 0 else 0.0
        return 100.0 * self.spent_micros / self.limit_micros

    def __str__(self) -> str:
        return (
            f"{self.scope.name} budget {format_usd(self.limit_micros)}: "
            f"spent {format_usd(self.spent_micros)}, reserved {format_usd(self.reserved_micros)}"
        )


def headroom(limit_micros: int, spent_micros: int, reserved_micros: int) -> int:
    return max(0, limit_micros - spent_micros - reserved_micros)


def fits(limit_micros: int, spent_micros: int, reserved_micros: int, amount_micros: int) -> bool:
    """Whether reserving ``amount_micros`` keeps ``spent + reserved`` within the limit."""
    return spent_micros + reserved_micros + amount_micros <= limit_micros


def describe_call(model: str, max_tokens: int | None = None) -> str:
    """The parenthesised part of a refusal: ``gpt-4o-mini, max_tokens=800``."""
    return model if max_tokens is None else f"{model}, max_tokens={max_tokens}"


class BudgetExceeded(WfloError):
    """A reservation was refused because one enclosing budget has no room for it.

    ``str()`` is the part after ``BudgetExceeded: ``, e.g. ``notebook budget $0.50 —
    spent $0.41, reserved $0.05, this call needs up to $0.06 (gpt-4o-mini,
    max_tokens=800)``.
    """

    def __init__(
        self,
        *,
        scope: BudgetScope,
        limit_micros: int,
        spent_micros: int,
        reserved_micros: int,
        needed_micros: int,
        call_label: str = "",
    ) -> None:
        self.scope = scope
        self.limit_micros = limit_micros
        self.spent_micros = spent_micros
        self.reserved_micros = reserved_micros
        self.needed_micros = needed_micros
        self.call_label = call_label
        label = f" ({call_label})" if call_label else ""
        super().__init__(
            f"{scope.name} budget {format_usd(limit_micros)} — spent {format_usd(spent_micros)}, "
            f"reserved {format_usd(reserved_micros)}, "
            f"this call needs up to {format_usd(needed_micros)}{label}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # keyword-only __init__: rebuild through a helper so the error survives pickling
        # (multiprocessing, Temporal activity failures).
        return (
            _rebuild_budget_exceeded,
            (
                self.scope,
                self.limit_micros,
                self.spent_micros,
                self.reserved_micros,
                self.needed_micros,
                self.call_label,
            ),
        )


def _rebuild_budget_exceeded(
    scope: BudgetScope, limit: int, spent: int, reserved: int, needed: int, label: str
) -> BudgetExceeded:
    return BudgetExceeded(
        scope=scope,
        limit_micros=limit,
        spent_micros=spent,
        reserved_micros=reserved,
        needed_micros=needed,
        call_label=label,
    )


class BudgetNotFound(WfloError):
    """A reservation named a budget that does not exist."""

    def __init__(self, scope: BudgetScope) -> None:
        self.scope = scope
        super().__init__(f"no {scope.kind} budget {scope.key!r} is set")


# -- thresholds ---------------------------------------------------------------------------------
def reached_thresholds(limit_micros: int, spent_micros: int) -> list[int]:
    """Thresholds (percent of the limit) that ``spent_micros`` has reached.

    A zero limit has no meaningful percentage: its thresholds count as reached once
    anything at all is spent.
    """
    if limit_micros <= 0:
        return list(THRESHOLDS) if spent_micros > 0 else []
    return [t for t in THRESHOLDS if spent_micros * 100 >= t * limit_micros]


def crossed_thresholds(
    limit_micros: int,
    before_micros: int,
    after_micros: int,
    already_emitted: Iterable[int] | int = (),
) -> list[int]:
    """Thresholds to announce now that spending moved from ``before`` to ``after``.

    Every threshold reached at ``after`` that was not yet emitted, ascending (so one move
    from 40% to 95% announces 50, 75 and 90 once each). Spending that went *down*
    (``after < before``) crosses nothing. ``already_emitted`` is a collection of
    percentages or the bitmask stored in the ledger.
    """
    if after_micros < before_micros:
        return []
    emitted = set(
        thresholds_from_mask(already_emitted)
        if isinstance(already_emitted, int)
        else already_emitted
    )
    return [t for t in reached_thresholds(limit_micros, after_micros) if t not in emitted]


def thresholds_mask(thresholds: Iterable[int]) -> int:
    """Bitmask of thresholds (bit i is ``THRESHOLDS[i]``), as stored in ``budgets``."""
    mask = 0
    for t in thresholds:
        try:
            mask |= 1 << THRESHOLDS.index(t)
        except ValueError:
            raise ValueError(f"not a budget threshold: {t!r} (use {THRESHOLDS})") from None
    return mask


def thresholds_from_mask(mask: int) -> tuple[int, ...]:
    return tuple(t for i, t in enumerate(THRESHOLDS) if mask & (1 << i))


def rearm_thresholds(limit_micros: int, spent_micros: int, mask: int) -> int:
    """After a limit change: forget emitted thresholds that are no longer reached, so
    crossing them again (under the new limit) is announced again."""
    reached = set(reached_thresholds(limit_micros, spent_micros))
    return thresholds_mask(t for t in thresholds_from_mask(mask) if t in reached)


# -- periods ------------------------------------------------------------------------------------
def period_start(period: str, now: datetime) -> datetime | None:
    """Start (UTC) of the period containing ``now``: midnight for ``day``, the 1st for
    ``month``; ``None`` for a budget without a period."""
    check_period(period)
    if period == "none":
        return None
    if now.tzinfo is None:
        raise ValueError("period_start needs an aware datetime")
    utc = now.astimezone(UTC)
    midnight = utc.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight if period == "day" else midnight.replace(day=1)


def needs_reset(period: str, stored_start: datetime | None, now: datetime) -> bool:
    """Whether a budget whose current period began at ``stored_start`` has rolled over."""
    current = period_start(period, now)
    if current is None:
        return False
    return stored_start is None or stored_start < current


def threshold_notice(scope: BudgetScope, threshold: int, state: BudgetState) -> str:
    """The line a cell shows once when money crosses a threshold of a budget:
    ``notebook budget crossed 75%: $0.38 of $0.50``."""
    name = f"team {scope.key}" if scope.kind == "team" else scope.kind
    used = format_usd(state.spent_micros + state.reserved_micros)
    return f"{name} budget crossed {threshold}%: {used} of {format_usd(state.limit_micros)}"
