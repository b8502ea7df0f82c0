"""threshold arithmetic without bigint overflow

``wflo_reached_mask`` (migration 0002) compared ``spent * 100`` with ``percent * limit``
in ``bigint``. For a budget whose limit (or spending) is above 92,233,720,368,547,758
micro-dollars, about $92 billion (the column and ``core.budget.check_limit`` allow up to
2^63 - 1), that overflowed, so every ``wflo_finish`` on the budget failed with ``bigint
out of range``: its reservations could be neither settled, released nor expired, and
once the lease of one had ended, the lease expiry that ``reserve`` runs failed as well,
for every budget, in every process. The comparison is now made in ``numeric``, exactly
as ``core.budget.reached_thresholds`` makes it in Python (the disagreement was found by
tests/integration/test_budget_truth.py).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

from wflo_jupyter.ledger.migration_texts import migration_module, or_replace

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_BIGINT = ("p_spent * 100 >= ", " * p_limit THEN")
_NUMERIC = ("p_spent::numeric * 100 >= ", " * p_limit::numeric THEN")


def _reached_mask_0002() -> str:
    functions = migration_module("0002_budgets_reservations_calls.py")._FUNCTIONS
    (text,) = [f for f in functions if "FUNCTION wflo_reached_mask(" in f]
    return or_replace(str(text))


def _reached_mask_0006() -> str:
    function_text = _reached_mask_0002()
    for old, new in zip(_BIGINT, _NUMERIC, strict=True):
        assert function_text.count(old) == 4, f"{old!r} not found 4 times: update migration 0006"
        function_text = function_text.replace(old, new)
    return function_text


def upgrade() -> None:
    op.execute(_reached_mask_0006())


def downgrade() -> None:
    op.execute(_reached_mask_0002())
