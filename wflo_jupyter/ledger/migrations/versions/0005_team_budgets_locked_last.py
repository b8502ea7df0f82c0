"""shared budgets locked last: the global lock order becomes cell, notebook, team

A call reserves against every budget that encloses it: the cell's, the notebook's and
any team's. Only the team budget is shared across kernels, so it is the row that
concurrent calls queue on. Until now budgets were locked in ascending id. The team
budget is usually the oldest, so it was locked first and stayed locked while the cell's
and the notebook's rows were updated. ``wflo_reserve`` and ``wflo_finish`` now take the
budget locks in the order (cell, notebook, other kinds; then id), which is still one
total order, so still deadlock-free. The shared row is locked last and held only for its
own update, the notify and the commit. ``reservations.budget_ids`` lists the ids in that
order; nothing reads it as sorted.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

from wflo_jupyter.ledger.migration_texts import migration_module

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# the lock rank of a budget (cell < notebook < team and any other kind); then its id
LOCK_RANK = "CASE b.scope_kind WHEN 'cell' THEN 0 WHEN 'notebook' THEN 1 ELSE 2 END"

_RESERVE_ORDER = "array_agg(b.id ORDER BY b.id), array_agg(b.period::text ORDER BY b.id)"
_RESERVE_ORDER_RANKED = (
    f"array_agg(b.id ORDER BY {LOCK_RANK}, b.id), "
    f"array_agg(b.period::text ORDER BY {LOCK_RANK}, b.id)"
)
_FINISH_LOCKS = "ORDER BY b.id FOR NO KEY UPDATE"
_FINISH_LOCKS_RANKED = f"ORDER BY {LOCK_RANK}, b.id FOR NO KEY UPDATE"


def _edited(function_text: str, old: str, new: str) -> str:
    assert function_text.count(old) == 1, f"{old!r} not found once: update migration 0005"
    return function_text.replace(old, new)


def _reserve_0004() -> str:
    return str(migration_module("0004_threshold_lists_by_lookup.py").reserve_0004())


def _finish_0003() -> str:
    return str(migration_module("0003_lean_reservations.py")._finish_0003())


def upgrade() -> None:
    op.execute(_edited(_reserve_0004(), _RESERVE_ORDER, _RESERVE_ORDER_RANKED))
    op.execute(_edited(_finish_0003(), _FINISH_LOCKS, _FINISH_LOCKS_RANKED))


def downgrade() -> None:
    op.execute(_reserve_0004())
    op.execute(_finish_0003())
