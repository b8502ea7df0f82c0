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

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

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


def _sibling(filename: str) -> ModuleType:
    """Another migration's module: the function texts an upgrade edits and a downgrade
    restores."""
    path = Path(__file__).with_name(filename)
    spec = importlib.util.spec_from_file_location(f"wflo_migration_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _replaced(function_text: str, call: str, lookup: str) -> str:
    assert call in function_text, f"{call} not found: update migration 0004"
    text = function_text.replace(call, lookup)
    return text.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def _reserve_0003() -> str:
    return str(_sibling("0003_lean_reservations.py")._RESERVE).replace(
        "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1
    )


def _budget_payload_0002() -> str:
    functions = _sibling("0002_budgets_reservations_calls.py")._FUNCTIONS
    (text,) = [f for f in functions if "FUNCTION wflo_budget_payload(" in f]
    return str(text).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute(
        _replaced(
            _reserve_0003(),
            "wflo_thresholds(v_b.thresholds_emitted)",
            _lookup("v_b.thresholds_emitted", "json"),
        )
    )
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
