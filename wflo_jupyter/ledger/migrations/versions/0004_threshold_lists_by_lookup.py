"""threshold lists by lookup in the functions that run under a budget lock

Every budget state a money move reports (the reserve payload, each ``budget.updated``
event and NOTIFY) carries ``thresholds_emitted`` as a list such as ``[50, 75]``, decoded
from the budget's 4-bit mask. ``wflo_reserve`` and ``wflo_budget_payload`` decoded it by
calling ``wflo_thresholds``, a SQL function that builds a ``jsonb`` array which
``json_build_object`` then prints back out: measured with pgbench against the bare
UPDATE, that call alone cost about a quarter of a reservation's throughput on one hot
budget, because it runs while the budget's row lock is held. Here both functions pick
the list from a constant array of the 16 possible lists instead (same JSON values, so
clients see no change). ``wflo_thresholds`` stays for anything else that calls it.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

from wflo_jupyter.ledger.migration_texts import migration_module, or_replace

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_THRESHOLD_PERCENTS = (50, 75, 90, 100)  # bit i of the mask = the i-th of these


def _all_lists_literal(sql_type: str) -> str:
    """A SQL array literal whose element ``mask + 1`` is the JSON list for ``mask``."""
    lists = [
        "[" + ", ".join(str(p) for i, p in enumerate(_THRESHOLD_PERCENTS) if mask >> i & 1) + "]"
        for mask in range(1 << len(_THRESHOLD_PERCENTS))
    ]
    return "'{" + ",".join(f'"{item}"' for item in lists) + "}'::" + sql_type + "[]"


def _lookup(mask_expression: str, sql_type: str) -> str:
    return f"({_all_lists_literal(sql_type)})[({mask_expression} & 15) + 1]"


def _replaced(function_text: str, call: str, lookup: str) -> str:
    assert call in function_text, f"{call} not found: update migration 0004"
    return or_replace(function_text.replace(call, lookup))


def _reserve_0003() -> str:
    return or_replace(str(migration_module("0003_lean_reservations.py")._RESERVE))


def _budget_payload_0002() -> str:
    functions = migration_module("0002_budgets_reservations_calls.py")._FUNCTIONS
    (text,) = [f for f in functions if "FUNCTION wflo_budget_payload(" in f]
    return or_replace(str(text))


def reserve_0004() -> str:
    """``wflo_reserve`` as this revision leaves it (migration 0005 edits it)."""
    return _replaced(
        _reserve_0003(),
        "wflo_thresholds(v_b.thresholds_emitted)",
        _lookup("v_b.thresholds_emitted", "json"),
    )


def upgrade() -> None:
    op.execute(reserve_0004())
    op.execute(
        _replaced(
            _budget_payload_0002(),
            "wflo_thresholds(p_b.thresholds_emitted)",
            _lookup("p_b.thresholds_emitted", "jsonb"),
        )
    )


def downgrade() -> None:
    op.execute(_reserve_0003())
    op.execute(_budget_payload_0002())
